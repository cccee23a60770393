"""Resident memory: one backbone with N KEN tasks cached vs N full fine-tuned models (issue: performance, 3. memory).

Run from the repository root:  python -m bench.bench_memory [--tasks 0 1 10 50] [--models 1 10]

- ``ken serve`` with N tasks registered (``--preload``), each one actually cached: one request per
  task, with a device cache large enough for all of them (``KEN_DEVICE_CACHE_BYTES`` = 16 GiB) and
  the host tier at the service's default (none on a CPU backbone). Reported: the server's RSS
  (``/proc/PID/status`` VmRSS) and the engine's own accounting (``ken_cache_bytes`` per tier,
  ``ken_cache_entries``). Tasks cycle through the two fine-tunes' k=100 KEN subnetworks
  (``--source k100``, the default k) or through all 16 benchmark subnetworks (``--source
  mixed16``: k in 25..200, ken and magnitude), each under its own task name, so every task holds
  its own cache entries. Each N runs in a fresh server. With ``--host-tier`` a second series also
  keeps every parsed subnetwork in a host tier (``KEN_HOST_CACHE_BYTES`` = 16 GiB; what a GPU
  backbone gets by default).
- The alternative: N full fine-tuned models side by side (the subnetworks materialised, loaded with
  ``AutoModelForSequenceClassification.from_pretrained``) in a separate process
  (``bench.dedicated_server --report-rss``: Python, torch, transformers, FastAPI imported, the models loaded),
  and the same as a running ``bench.dedicated_server`` after one request per model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.common import log

GiB = 1 << 30
MB = 1e6


def task_files(subnetworks: dict[str, Path], count: int, source: str) -> dict[str, Path]:
    pool = list(subnetworks.values())
    if source == "k100":
        pool = [p for n, p in subnetworks.items() if n.endswith("-ken-k100")]
    return {f"mem-{i:03d}": pool[i % len(pool)] for i in range(count)}


def measure_ken(files: dict[str, Path], *, host_tier: bool, port: int = 18301) -> dict:
    env = {"KEN_DEVICE_CACHE_BYTES": str(16 * GiB)}
    if host_tier:
        env["KEN_HOST_CACHE_BYTES"] = str(16 * GiB)
    with tempfile.TemporaryDirectory() as tmp, common.preload_dir(files) as preload:
        command = common.ken_server_command(port, Path(tmp) / "store", preload)
        with common.server(command, port, env, name="ken-memory") as (url, pid):
            idle = common.rss_bytes(pid)
            for task in files:
                common.http_post_json(url + "/v1/predict", {"task": task, "inputs": ["warm up"]})
            time.sleep(1.0)
            metrics = common.scrape(url)
            return {
                "tasks": len(files),
                "rss": common.rss_bytes(pid),
                "rss_before_requests": idle,
                "device_bytes": common.metric_sum(metrics, "ken_cache_bytes", 'tier="device"'),
                "host_bytes": common.metric_sum(metrics, "ken_cache_bytes", 'tier="host"'),
                "device_entries": common.metric_sum(metrics, "ken_cache_entries", 'tier="device"'),
                "host_entries": common.metric_sum(metrics, "ken_cache_entries", 'tier="host"'),
            }


def measure_dedicated_bare(folders: list[Path]) -> dict:
    command = [sys.executable, "-m", "bench.dedicated_server", "--report-rss", "--models", *map(str, folders)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_dedicated_serving(folders: list[Path], port: int = 18302) -> int:
    command = [sys.executable, "-m", "bench.dedicated_server", "--port", str(port), "--models", *map(str, folders)]
    with common.server(command, port, name="dedicated-memory") as (url, pid):
        for folder in folders:
            common.http_post_json(url + "/v1/predict", {"task": folder.name, "inputs": ["warm up"]})
        time.sleep(1.0)
        return common.rss_bytes(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 1, 10, 50])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--source", choices=["k100", "mixed16"], default="k100")
    parser.add_argument("--host-tier", action="store_true", help="also measure with a 16 GiB host tier")
    parser.add_argument("--output", type=Path, default=common.CACHE / "memory_results.json")
    args = parser.parse_args()
    started = time.monotonic()
    subnetworks, real = common.prepare_subnetworks()
    folders = common.prepare_materialized(subnetworks)
    order = sorted(folders, key=lambda n: (not n.endswith("-k100"), n))  # distinct models, k=100 ones first
    if max(args.models) > len(order):
        parser.error(f"only {len(order)} distinct fine-tuned models to load")

    ken_rows = []
    for host_tier in [False, True] if args.host_tier else [False]:
        for count in args.tasks:
            row = measure_ken(task_files(subnetworks, count, args.source), host_tier=host_tier)
            row["host_tier"] = host_tier
            ken_rows.append(row)
            tier = "on" if host_tier else "off"
            log(f"ken serve, {count} tasks (host tier {tier}): RSS {row['rss'] / MB:.0f} MB, "
                f"device cache {row['device_bytes'] / MB:.1f} MB, "
                f"host cache {row['host_bytes'] / MB:.1f} MB")  # fmt: skip
    model_rows = []
    for count in args.models:
        chosen = [folders[n] for n in order[:count]]
        bare = measure_dedicated_bare(chosen)
        serving = measure_dedicated_serving(chosen)
        model_rows.append({"models": count, "rss_bare": bare["rss_bytes"], "rss_serving": serving})
        log(f"{count} full models: RSS {bare['rss_bytes'] / MB:.0f} MB loaded, {serving / MB:.0f} MB serving")

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "real_finetunes": real, "source": args.source}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "ken": ken_rows, "models": model_rows}, indent=1))

    one = next((r for r in model_rows if r["models"] == 1), None)
    print(f"\n{'real' if real else 'SYNTHETIC'} fine-tunes; tasks from: {args.source}; {meta['date']}\n")
    print("| server | tasks | RSS MB | x one model (serving) | x one model (bare) | device cache MB "
          "| host cache MB | cached MB per task |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in ken_rows:
        cached = row["device_bytes"] + row["host_bytes"]
        label = "ken serve" + (", host tier on" if row["host_tier"] else "")
        print(f"| {label} | {row['tasks']} | {row['rss'] / MB:.0f} | "
              f"{row['rss'] / one['rss_serving']:.2f}x | {row['rss'] / one['rss_bare']:.2f}x | "
              f"{row['device_bytes'] / MB:.1f} | {row['host_bytes'] / MB:.1f} | "
              f"{cached / max(1, row['tasks']) / MB:.1f} |" if one else "")  # fmt: skip
    for row in model_rows:
        print(f"| dedicated models, serving | {row['models']} | {row['rss_serving'] / MB:.0f} | "
              f"{row['rss_serving'] / one['rss_serving']:.2f}x | – | – | – | – |")  # fmt: skip
        print(f"| full models loaded (bare process) | {row['models']} | {row['rss_bare'] / MB:.0f} | – | "
              f"{row['rss_bare'] / one['rss_bare']:.2f}x | – | – | – |")  # fmt: skip
    ten = next((r for r in ken_rows if r["tasks"] == 10 and not r["host_tier"]), None)
    if ten and one:
        ratio = ten["rss"] / one["rss_serving"]
        print(f"\n- 10 KEN tasks vs one dedicated model server: {ten['rss'] / MB:.0f} / {one['rss_serving'] / MB:.0f} "
              f"= **{ratio:.2f}x** (target <= 1.6x: {'met' if ratio <= 1.6 else 'MISSED'}); vs a bare process "
              f"with one model: {ten['rss'] / one['rss_bare']:.2f}x")  # fmt: skip
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
