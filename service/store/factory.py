"""Choose and build the subnetwork store from the service configuration."""

from __future__ import annotations

from pathlib import Path

from service.store.base import SubnetworkStore
from service.store.directory import DirectorySubnetworkStore
from service.store.redis_store import DEFAULT_KEY_PREFIX, RedisSubnetworkStore


def open_store(redis_url: str | None, directory: Path, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> SubnetworkStore:
    """The Redis store when ``redis_url`` is set (non-empty), else the directory store on ``directory``.

    Nothing is contacted here: call ``await store.start()`` before use and ``await store.close()``
    at shutdown.
    """
    if redis_url:
        return RedisSubnetworkStore(redis_url, key_prefix=key_prefix)
    return DirectorySubnetworkStore(directory)
