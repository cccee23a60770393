"""The ``ken serve`` and ``ken push`` subcommands (registered through the ``ken.commands`` entry points)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

from service.client import KenClient, KenServiceError
from service.logs import configure_logging
from service.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
#: As ``ken.cli``: 2 for bad input (a wrong path, URL, token or file), 1 for anything unexpected.
EXIT_FAILURE, EXIT_USAGE = 1, 2


def register_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP service",
        description="Serve KEN subnetworks over HTTP. Flags override KEN_* environment variables.",
    )
    parser.add_argument("--host", help="address to bind (KEN_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (KEN_PORT, default 8000)")
    parser.add_argument("--backbone", type=Path, help="local model folder (KEN_BACKBONE, default all-MiniLM-L6-v2)")
    parser.add_argument("--store-dir", type=Path, help="directory store (KEN_STORE_DIR, default ./.ken-store)")
    parser.add_argument("--redis-url", help="use the Redis store at this URL (KEN_REDIS_URL)")
    parser.add_argument(
        "--preload", type=Path, dest="preload_dir", metavar="DIR", help="upload DIR/*.safetensors at start-up"
    )
    parser.add_argument(
        "--watch",
        type=float,
        dest="preload_watch_s",
        metavar="SECONDS",
        help="re-scan the --preload folder every SECONDS for new or changed files (KEN_PRELOAD_WATCH_S)",
    )
    parser.add_argument(
        "--expect",
        dest="preload_expect",
        metavar="TASK[,TASK]",
        help="tasks the --preload folder will receive; /readyz lists those not loaded yet (KEN_PRELOAD_EXPECT)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        dest="max_sequence_length",
        metavar="TOKENS",
        help="truncate inputs to TOKENS word pieces; use the tasks' training max_length (KEN_MAX_SEQUENCE_LENGTH)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="KEN_DEVICE, default auto")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="KEN_DTYPE, default float32")
    parser.add_argument("--log-level", help="KEN_LOG_LEVEL, default INFO")
    scale = parser.add_argument_group("scale-out on Ray Serve (docs/scale-out.md)")
    scale.add_argument("--ray", action="store_true", help="serve through Ray Serve, on N replicas sharing the store")
    scale.add_argument("--replicas", type=int, default=2, help="replicas, each with its own backbone (default 2)")
    scale.add_argument("--ray-address", help="Ray cluster to join (default: the local one, started if none runs)")
    scale.add_argument("--cpus-per-replica", type=float, default=1.0, help="default 1")
    scale.add_argument("--gpus-per-replica", type=float, default=0.0, help="default 0; 1 puts each on its own GPU")
    scale.add_argument("--max-models-per-replica", type=int, default=16, help="tasks Ray tracks per replica")
    parser.set_defaults(handler=run_serve)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags that were given taking precedence."""
    names = (
        "host",
        "port",
        "backbone",
        "store_dir",
        "redis_url",
        "preload_dir",
        "preload_watch_s",
        "preload_expect",
        "max_sequence_length",
        "device",
        "dtype",
        "log_level",
    )
    overrides: dict[str, Any] = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return Settings(**overrides)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app

    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    try:
        listener = bind_listener(settings.host, settings.port)
    except OSError as exc:
        print(f"ken serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.admin_token is None and not settings.binds_loopback:
        logger.warning("KEN_ADMIN_TOKEN is not set and the server listens beyond loopback: admin routes are disabled")
    if args.ray:
        listener.close()  # Ray Serve's proxy binds the port itself; the check above still failed fast if busy
        return run_on_ray(args, settings)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_config=None)
    with listener:
        uvicorn.Server(config).run(sockets=[listener])
    return 0


def run_on_ray(args: argparse.Namespace, settings: Settings) -> int:
    from service.deploy.cluster import serve_until_stopped
    from service.deploy.ray_app import ScaleOut

    if args.replicas < 1 or args.max_models_per_replica < 1:
        print("ken serve: --replicas and --max-models-per-replica must be at least 1", file=sys.stderr)
        return 2
    scale = ScaleOut(
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica,
        max_models_per_replica=args.max_models_per_replica,
    )
    serve_until_stopped(settings, scale, args.ray_address)
    return 0


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything is loaded, so a busy port fails at once.

    uvicorn serves on this very socket (no window in which another process could take the port).
    Raises ``OSError`` with a message saying how to choose another port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                exc.errno,
                f"port {port} on {host} is already in use (another ken serve?); "
                f"choose another with --port N or KEN_PORT=N",
            ) from None
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.set_inheritable(True)
    return listener


def register_push(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push", help="upload a subnetwork file to a running service", description="Upload a subnetwork file."
    )
    parser.add_argument("file", type=Path, help="the .safetensors subnetwork file")
    parser.add_argument("--task", help="task name (default: the file's stem)")
    parser.add_argument("--url", help=f"service URL (default $KEN_URL, else {DEFAULT_URL})")
    parser.add_argument("--token", help="admin token (default $KEN_ADMIN_TOKEN)")
    parser.set_defaults(handler=run_push)


def run_push(args: argparse.Namespace) -> int:
    task = args.task or args.file.stem
    url = args.url or os.environ.get("KEN_URL", DEFAULT_URL)
    token = args.token or os.environ.get("KEN_ADMIN_TOKEN")
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"ken push: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with KenClient(url, token=token) as client:
            manifest = client.put(task, data)
    except KenServiceError as exc:
        print(f"ken push: the service refused {args.file} as {task!r}: {exc}{_hint(exc)}", file=sys.stderr)
        return EXIT_USAGE if exc.status_code < 500 else EXIT_FAILURE
    except httpx.ConnectError as exc:
        print(
            f"ken push: nothing answers at {url} ({exc}); is `ken serve` running there? "
            "Give its address with --url or KEN_URL",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except httpx.HTTPError as exc:
        print(f"ken push: no answer from {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(manifest.model_dump_json(indent=2))
    return 0


def _hint(error: KenServiceError) -> str:
    """What to do about an answer whose message alone may not say it."""
    if error.status_code == 401:
        return " (give the admin token with --token or KEN_ADMIN_TOKEN)"
    if error.status_code == 403:
        return " (check the admin token: --token or KEN_ADMIN_TOKEN)"
    if error.status_code == 404:
        return " (is --url the service's root address, e.g. http://127.0.0.1:8000?)"
    return ""
