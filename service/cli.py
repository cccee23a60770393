"""The ``ken serve`` and ``ken push`` subcommands (registered through the ``ken.commands`` entry points)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from service.client import KenClient, KenServiceError
from service.logs import configure_logging
from service.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"


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
    names = ("host", "port", "backbone", "store_dir", "redis_url", "preload_dir", "device", "dtype", "log_level")
    overrides: dict[str, Any] = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return Settings(**overrides)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app

    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    if settings.admin_token is None and not settings.binds_loopback:
        logger.warning("KEN_ADMIN_TOKEN is not set and the server listens beyond loopback: admin routes are disabled")
    if args.ray:
        return run_on_ray(args, settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
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
        with KenClient(url, token=token) as client:
            manifest = client.put(task, data)
    except OSError as exc:
        print(f"ken push: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    except KenServiceError as exc:
        print(f"ken push: refused: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"ken push: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(manifest.model_dump_json(indent=2))
    return 0
