"""Serving throughput and latency under the four popularity mixes (issue: performance, 2. serving).

Run from the repository root:  python -m bench.bench_serving [--concurrency 1 4 16 64] [--scale 1.0]

Sixteen distinct tasks: KEN subnetworks of two fine-tunes of all-MiniLM-L6-v2 (the demo's
``.cache/demo/finetuned/{bbc-news,chatter-topic}``; synthetic fine-tunes if those are absent), each
with ``ken`` at k in {25, 50, 100, 200} and ``magnitude`` at k in {10, 25, 50, 100}
(``bench.common.SPECS``), cached in ``.cache/bench``.
Three servers run side by side on loopback, idle except when measured, and every cell of the
table is measured on all three back to back (so slow drifts of this shared machine hit all alike):

- ``batched``: ``ken serve`` with the task-batching scheduler (defaults: 32 inputs, 2 ms, 4 in a row);
  both ken servers get 4 GiB cache budgets so that all 16 tasks stay cached (the default 512 MiB
  device tier is just short of the 16 deltas);
- ``naive``: ``ken serve`` with ``KEN_SCHEDULING=swap-per-request`` (apply, forward, revert per request);
- ``dedicated``: ``bench.dedicated_server``, one full model per task (the 16 subnetworks materialised),
  all resident, the same batching code and limits, no swaps;
- ``mixed``: ``ken serve`` like ``batched`` plus ``KEN_MIXED_BATCHES`` (``--mixed-setting``, default
  ``auto``): requests of several tasks may run as one mixed pass on the pristine weights.

Mixes: identical (1 task), uniform over 4 tasks (the four k=100 subnetworks), uniform over 16,
skewed (Zipf, s=1, over 16), distinct (round-robin over 16: every request another task). Load:
``bench.loadgen`` in its own process, closed loop, one short real text per request (BBC News
headlines and chatterbot-corpus lines). Each run is bounded in requests and seconds.
The swap time comes from the server's own ``ken_swap_seconds`` histogram during the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.common import log

MODES = ("batched", "naive", "dedicated", "mixed")
MIX_ORDER = ("identical", "uniform-4", "uniform-16", "zipf-16", "distinct-16")
REQUESTS = {1: 150, 4: 300, 16: 600, 64: 1200}
PORTS = {"batched": 18101, "naive": 18102, "dedicated": 18103, "mixed": 18104}


def mixes(names: list[str]) -> dict[str, tuple[str, list[str]]]:
    k100 = [n for n in names if n.endswith("-k100")]
    first = k100[0]
    return {
        "identical": ("identical", [first]),
        "uniform-4": ("uniform", k100),
        "uniform-16": ("uniform", names),
        "zipf-16": ("zipf", names),
        "distinct-16": ("distinct", names),
    }


def run_load(
    url: str, mix: str, tasks: list[str], concurrency: int, requests: int, texts: Path, seed: int, max_s: float = 10
) -> dict:
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--mix", mix, "--concurrency", str(concurrency),
               "--requests", str(requests), "--warmup", str(max(8, 2 * concurrency)), "--max-seconds", str(max_s),
               "--texts", str(texts), "--seed", str(seed), "--tasks", *tasks]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def swap_stats(before: dict, after: dict) -> dict:
    """Swaps and the mean cost of one task change (ms) between two scrapes of a ken server's /metrics.

    A task change is an apply from pristine or a switch from another task; its cost is all swap time
    (apply, switch and revert: the naive mode reverts after every request) over those changes."""

    def delta(name: str, labels: str = "") -> float:
        return common.metric_sum(after, name, labels) - common.metric_sum(before, name, labels)

    stats = {"swaps": delta("ken_swaps_total"), "batches": delta("ken_batch_size_inputs_count")}
    changes = sum(delta("ken_swap_seconds_count", f'op="{op}"') for op in ("apply", "switch"))
    seconds = sum(delta("ken_swap_seconds_sum", f'op="{op}"') for op in ("apply", "switch", "revert"))
    stats["change_ms"] = 1000 * seconds / changes if changes else 0.0
    stats["mixed_batches"] = delta("ken_mixed_batches_total", 'outcome="mixed"')
    stats["mean_batch"] = delta("ken_batch_size_inputs_sum") / stats["batches"] if stats["batches"] else 0.0
    return stats


def library_swap_ms(subnetworks: dict[str, Path], names: list[str], repeats: int = 20) -> float:
    """Median apply+revert of the given subnetworks with the library on a fresh backbone (this process)."""
    import ken

    backbone = ken.load_backbone_model(common.base_dir())
    flat = ken.FlatParameters(backbone)
    swapper = ken.Swapper(flat)
    times = []
    for name in names:
        plan = ken.DeltaPlan(ken.load_file(subnetworks[name]), flat)
        for i in range(repeats + 2):
            started = time.perf_counter()
            swapper.apply(plan)
            swapper.revert()
            if i >= 2:
                times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time limit of each load run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--mixed-setting", choices=["auto", "always"], default="auto",
                        help="KEN_MIXED_BATCHES of the mixed server")  # fmt: skip
    parser.add_argument("--mixes", nargs="+", choices=MIX_ORDER, default=list(MIX_ORDER))
    parser.add_argument("--target-repeats", type=int, default=3, help="alternating target runs (0: none)")
    parser.add_argument("--output", type=Path, default=common.CACHE / "serving_results.json")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/serving_throughput.png"))
    args = parser.parse_args()
    started = time.monotonic()
    load_at_start = os.getloadavg()

    subnetworks, real = common.prepare_subnetworks()
    names = list(subnetworks)
    folders = common.prepare_materialized(subnetworks) if "dedicated" in args.modes else {}
    texts = common.prepare_texts()
    mix_defs = mixes(names)
    log(f"prepared {len(names)} subnetworks ({'real' if real else 'SYNTHETIC'} fine-tunes) in "
        f"{time.monotonic() - started:.0f} s")  # fmt: skip
    swap_lib_ms = library_swap_ms(subnetworks, mix_defs["uniform-4"][1])
    log(f"library apply+revert of the four k=100 subnetworks: median {swap_lib_ms:.2f} ms")

    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, common.preload_dir(subnetworks) as preload:
        from contextlib import ExitStack

        with ExitStack() as stack:
            urls = {}
            for mode in args.modes:
                port = PORTS[mode]
                if mode == "dedicated":
                    command = [sys.executable, "-m", "bench.dedicated_server", "--port", str(port), "--models",
                               *[str(folders[n]) for n in names]]  # fmt: skip
                    env = {}
                else:
                    command = common.ken_server_command(port, Path(tmp) / mode, preload)
                    # A device cache that holds all 16 tasks (the default 512 MiB is just short of their ~0.5 GB).
                    env = {"KEN_SCHEDULING": "swap-per-request" if mode == "naive" else "batched",
                           "KEN_DEVICE_CACHE_BYTES": str(4 << 30), "KEN_HOST_CACHE_BYTES": str(4 << 30)}  # fmt: skip
                    if mode == "mixed":
                        env["KEN_MIXED_BATCHES"] = args.mixed_setting
                log(f"starting {mode} server on port {port}")
                urls[mode], _ = stack.enter_context(common.server(command, port, env, name=mode))
                for name in names:  # one request per task: every delta staged and cached, every head built
                    common.http_post_json(urls[mode] + "/v1/predict", {"task": name, "inputs": ["warm up"]})
            log(f"servers ready after {time.monotonic() - started:.0f} s")
            cells = [(mix, c) for mix in args.mixes for c in args.concurrency]
            for index, (mix, concurrency) in enumerate(cells):
                kind, tasks = mix_defs[mix]
                requests = max(20, int(REQUESTS.get(concurrency, 40 * concurrency) * args.scale))
                for mode in args.modes:
                    before = common.scrape(urls[mode]) if mode != "dedicated" else {}
                    result = run_load(urls[mode], kind, tasks, concurrency, requests, texts, index, args.max_seconds)
                    if mode != "dedicated":
                        result.update(swap_stats(before, common.scrape(urls[mode])))
                    result.update(mode=mode, mix_name=mix)
                    results.append(result)
                    log(f"[{index + 1}/{len(cells)}] {mix:<11} c={concurrency:<3} {mode:<9} "
                        f"{result['inputs_per_s']:7.1f} inputs/s  p50 {result['p50_ms']:6.1f} ms  "
                        f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}")  # fmt: skip
            targets = measure_targets(urls, mix_defs, texts, args) if "batched" in urls and args.target_repeats else []
    meta = {
        "targets": targets,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "torch_threads": __import__("torch").get_num_threads(),
        "real_finetunes": real,
        "library_swap_ms": swap_lib_ms,
        "tasks": names,
        "mixed_setting": args.mixed_setting,
        "mixes": {m: mix_defs[m] for m in args.mixes},
        "seconds": round(time.monotonic() - started),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    report(results, meta, args)
    if args.plot:
        plot(results, args)
    log(f"done in {time.monotonic() - started:.0f} s; results in {args.output}")


def measure_targets(urls: dict, mix_defs: dict, texts: Path, args: argparse.Namespace) -> list[dict]:
    """Identical and uniform-4 on the batched server, alternating A B A B ..., at 1 and at the top concurrency.

    The targets compare two mixes; alternating them a few times and taking medians keeps this
    shared machine's drifts out of the ratio.
    """
    runs = []
    for concurrency in (1, max(args.concurrency)):
        requests = max(20, int(REQUESTS.get(concurrency, 40 * concurrency) * args.scale))
        for repeat in range(args.target_repeats):
            for mix in ("identical", "uniform-4"):
                kind, tasks = mix_defs[mix]
                before = common.scrape(urls["batched"])
                result = run_load(urls["batched"], kind, tasks, concurrency, requests, texts, 100 + repeat,
                                  args.max_seconds)  # fmt: skip
                result.update(swap_stats(before, common.scrape(urls["batched"])), mix_name=mix, repeat=repeat)
                runs.append(result)
                log(f"target run {repeat + 1}/{args.target_repeats}: {mix:<9} c={concurrency:<3} "
                    f"{result['inputs_per_s']:7.1f} inputs/s  p50 {result['p50_ms']:6.1f} ms  "
                    f"task change {result['change_ms']:.2f} ms")  # fmt: skip
    return runs


def target_summary(runs: list[dict], top: int) -> list[str]:
    def median_of(mix: str, concurrency: int, key: str) -> float:
        values = [r[key] for r in runs if r["mix_name"] == mix and r["concurrency"] == concurrency]
        return statistics.median(values) if values else float("nan")

    lines = []
    ratios = []
    for repeat in sorted({r["repeat"] for r in runs}):
        pair = {r["mix_name"]: r for r in runs if r["repeat"] == repeat and r["concurrency"] == top}
        if len(pair) == 2:
            ratios.append(pair["uniform-4"]["inputs_per_s"] / pair["identical"]["inputs_per_s"])
    if ratios:
        ratio = statistics.median(ratios)
        lines.append(
            f"- throughput at {top} clients: uniform-4 {median_of('uniform-4', top, 'inputs_per_s'):.0f} vs identical "
            f"{median_of('identical', top, 'inputs_per_s'):.0f} inputs/s (medians); per-pair ratios "
            f"{', '.join(f'{x:.2f}' for x in ratios)}; median **{ratio:.2f}x** (target >= 0.9x: "
            f"{'met' if ratio >= 0.9 else 'MISSED'})"
        )
    single, mixed = median_of("identical", 1, "p50_ms"), median_of("uniform-4", 1, "p50_ms")
    if single == single and mixed == mixed:
        swap = median_of("uniform-4", 1, "change_ms")
        swaps = median_of("uniform-4", 1, "swaps") / max(1, median_of("uniform-4", 1, "ok"))
        bound = single + swap + 5
        lines.append(
            f"- 1 client: uniform-4 p50 {mixed:.2f} ms vs identical p50 {single:.2f} ms + one swap {swap:.2f} ms "
            f"(server's mean task change; {swaps:.2f} swaps per request) + 5 ms = {bound:.2f} ms (medians over "
            f"the repeats): **{'met' if mixed <= bound else 'MISSED'}**"
        )
    return lines


def find(results: list[dict], mode: str, mix: str, concurrency: int) -> dict | None:
    return next(
        (r for r in results if r["mode"] == mode and r["mix_name"] == mix and r["concurrency"] == concurrency), None
    )


def report(results: list[dict], meta: dict, args: argparse.Namespace) -> None:
    fine = "real fine-tunes" if meta["real_finetunes"] else "SYNTHETIC fine-tunes (pretrained + noise)"
    print(f"\n{len(meta['tasks'])} tasks from {fine}; {meta['date']}; library apply+revert (k=100) median "
          f"{meta['library_swap_ms']:.2f} ms; load average (1 min) {meta['load_average_at_start'][0]:.1f} at start, "
          f"{meta['load_average_at_end'][0]:.1f} at end; torch threads {meta['torch_threads']}\n")  # fmt: skip
    top = max(args.concurrency)
    print("### Throughput (inputs/s) and latency (ms), one input per request\n")
    modes = [mode for mode in MODES if mode in args.modes]
    header = ["mix", "clients"]
    for mode in modes:
        header += [f"{mode} inputs/s", "p50", "p95", "p99"]
    header += ["batched / dedicated", "batched swaps/req", "mean batch"]
    if "mixed" in modes:
        header += ["mixed / dedicated", "mixed / batched", "mixed: swaps/req", "mixed passes / batch"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for mix in args.mixes:
        for c in args.concurrency:
            row = [mix, str(c)]
            for mode in modes:
                r = find(results, mode, mix, c)
                row += [f"{r['inputs_per_s']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}"] \
                    if r else ["–"] * 4  # fmt: skip
            b, d = find(results, "batched", mix, c), find(results, "dedicated", mix, c)
            row.append(f"{b['inputs_per_s'] / d['inputs_per_s']:.2f}x" if b and d and d["inputs_per_s"] else "–")
            row.append(f"{b['swaps'] / max(1, b['ok']):.2f}" if b else "–")
            row.append(f"{b['mean_batch']:.1f}" if b else "–")
            if "mixed" in modes:
                m = find(results, "mixed", mix, c)
                row.append(f"{m['inputs_per_s'] / d['inputs_per_s']:.2f}x" if m and d and d["inputs_per_s"] else "–")
                row.append(f"{m['inputs_per_s'] / b['inputs_per_s']:.2f}x" if m and b and b["inputs_per_s"] else "–")
                row.append(f"{m['swaps'] / max(1, m['ok']):.2f}" if m else "–")
                row.append(f"{m['mixed_batches'] / max(1, m['batches']):.2f}" if m else "–")
            print("| " + " | ".join(row) + " |")
    print("\n### Targets (alternating runs on the batched server)\n")
    for line in target_summary(meta.get("targets", []), top):
        print(line)
    print("\n### Targets from the table cells above\n")
    single_hi, mixed_hi = find(results, "batched", "identical", top), find(results, "batched", "uniform-4", top)
    if single_hi and mixed_hi:
        ratio = mixed_hi["inputs_per_s"] / single_hi["inputs_per_s"]
        verdict = "met" if ratio >= 0.9 else "MISSED"
        print(f"- uniform-4 vs identical throughput at {top} clients (batched): {mixed_hi['inputs_per_s']:.0f} / "
              f"{single_hi['inputs_per_s']:.0f} = **{ratio:.2f}x** (target >= 0.9x: {verdict})")  # fmt: skip
    single_lo, mixed_lo = find(results, "batched", "identical", 1), find(results, "batched", "uniform-4", 1)
    if single_lo and mixed_lo:
        swap = mixed_lo["change_ms"]
        bound = single_lo["p50_ms"] + swap + 5
        print(f"- 1 client, uniform-4 p50 {mixed_lo['p50_ms']:.2f} ms vs identical p50 {single_lo['p50_ms']:.2f} ms "
              f"+ swap {swap:.2f} ms (server's mean task change, "
              f"{mixed_lo['swaps'] / max(1, mixed_lo['ok']):.2f} swaps/request) + 5 ms = {bound:.2f} ms: "
              f"**{'met' if mixed_lo['p50_ms'] <= bound else 'MISSED'}**")  # fmt: skip


def plot(results: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"batched": "tab:blue", "naive": "tab:red", "dedicated": "tab:green", "mixed": "tab:purple"}
    labels = {"batched": "ken-serve, task batching", "naive": "ken-serve, swap per request",
              "dedicated": "dedicated model per task", "mixed": "ken-serve, mixed-task batches"}  # fmt: skip
    figure, axes = plt.subplots(2, len(args.mixes), figsize=(3.3 * len(args.mixes), 6.4), sharex=True, squeeze=False)
    for column, mix in enumerate(args.mixes):
        for mode in args.modes:
            points = sorted((r for r in results if r["mode"] == mode and r["mix_name"] == mix),
                            key=lambda r: r["concurrency"])  # fmt: skip
            xs = [r["concurrency"] for r in points]
            axes[0][column].plot(xs, [r["inputs_per_s"] for r in points], "o-", color=colours[mode], label=labels[mode])
            axes[1][column].plot(xs, [r["p50_ms"] for r in points], "o-", color=colours[mode], label=labels[mode])
        axes[0][column].set_title(mix)
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xticks(args.concurrency, [str(c) for c in args.concurrency])
            axes[row][column].grid(True, alpha=0.3)
        axes[1][column].set_yscale("log")
        axes[1][column].set_xlabel("concurrent clients")
    top = max(r["inputs_per_s"] for r in results)
    for column in range(len(args.mixes)):
        axes[0][column].set_ylim(0, top * 1.1)
    axes[0][0].set_ylabel("throughput (inputs/s)")
    axes[1][0].set_ylabel("p50 latency (ms, log)")
    handles, legend_labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, legend_labels, loc="lower center", ncol=len(args.modes), frameon=False)
    figure.suptitle("all-MiniLM-L6-v2 on a 2-core CPU: 16 KEN tasks, closed-loop clients, 1 input per request")
    figure.tight_layout(rect=(0, 0.05, 1, 0.96))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
