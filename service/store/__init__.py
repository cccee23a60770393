"""Versioned, checksummed storage of subnetwork files per task, in a directory or in Redis."""

from service.store.base import (
    ChangeCallback,
    CorruptSubnetwork,
    StoredManifest,
    StoreUnavailable,
    SubnetworkStore,
    TaskNotFound,
    validate_task,
)
from service.store.directory import DirectorySubnetworkStore
from service.store.factory import open_store
from service.store.redis_store import RedisSubnetworkStore

__all__ = [
    "ChangeCallback",
    "CorruptSubnetwork",
    "DirectorySubnetworkStore",
    "RedisSubnetworkStore",
    "StoreUnavailable",
    "StoredManifest",
    "SubnetworkStore",
    "TaskNotFound",
    "open_store",
    "validate_task",
]
