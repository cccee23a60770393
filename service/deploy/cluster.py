"""Joining a Ray cluster (or starting a local one) and running the application on it."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from service.deploy.ray_app import APP_NAME, ScaleOut, build_app
from service.settings import Settings

logger = logging.getLogger(__name__)


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address``; without one, the cluster running on this machine, else start a local one.

    Returns whether a local cluster was started (it lives as long as this process). ``num_cpus``
    bounds a started cluster; a joined one keeps its own resources.
    """
    if address:
        ray.init(address=address)
        return False
    try:
        ray.init(address="auto")
        return False
    except ConnectionError:
        logger.info("no Ray cluster is running here: starting a local one", extra={"num_cpus": num_cpus})
        start_local(num_cpus=num_cpus)
        return True


def start_local(*, num_cpus: int | None, attempts: int = 3, **options: Any) -> None:
    """``ray.init`` of a new local cluster, tried again when its raylet misses Ray's 30 s to register.

    A loaded machine can miss it (seen with a 1-minute load average of 18 on 2 cores); the half-started
    processes are shut down before the next try.
    """
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            logger.warning("the local Ray cluster did not start in time; trying again", extra={"attempt": attempt})


def deploy(settings: Settings, scale: ScaleOut) -> DeploymentHandle:
    """Start Serve's HTTP proxy on ``settings.host:port`` and run the application; returns when it is ready."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    return serve.run(build_app(settings, scale), name=APP_NAME, route_prefix="/")


def serve_until_stopped(settings: Settings, scale: ScaleOut, address: str | None) -> None:
    """``ken serve --ray``: deploy, wait for Ctrl-C (or SIGTERM), then take the application down."""
    started_here = connect(address)
    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs a handler of its own
    try:
        deploy(settings, scale)
        logger.info(
            "serving on Ray", extra={"url": f"http://{settings.host}:{settings.port}", "replicas": scale.replicas}
        )
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if not started_here:  # a cluster of our own goes down with ray.shutdown (its GCS may be gone already)
            serve.delete(APP_NAME)
        ray.shutdown()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop, systemd) takes the same way out as Ctrl-C
