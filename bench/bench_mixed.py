"""Mixed-task batches in the library: one mixed pass vs swap-and-run vs one dedicated model per task.

Run from the repository root:  python -m bench.bench_mixed [--device cpu|cuda] [--threads 2] [--quick]

For a batch of N inputs spread evenly over T of 16 tasks it times, back to back on one backbone:

- ``swap``: what the batched engine does: per task, ``Swapper.switch`` to it and a forward pass of
  its inputs (the batch starts with the last batch's task applied, as in a steady stream);
- ``mixed``: one :class:`ken.MixedForward` pass over all N inputs on the pristine weights;
- ``dedicated``: per task a forward pass of its inputs on its own full model (16 materialised copies).

and the cost model of :mod:`service.engine.mixed` (measured here by ``calibrate``): its estimates
for both ways and which it picks, so its choice can be checked against the measured times. It also
reports the largest |mixed - swapped| logit. Medians of ``--repeats`` runs.

Tasks: the cached real benchmark subnetworks (``bench.common.prepare_subnetworks``) when they exist
and the packaged all-MiniLM-L6-v2 is there, else (``--synthetic``, or no packaged model, e.g. on the
GPU machine) a randomly initialised backbone of all-MiniLM-L6-v2's shape with 16 synthetic plans of
KEN's shape: k in {25, 50, 100, 200} of every row of every tensor, and 30 % of the word-embedding
rows (a fine-tune changes only the rows of tokens it saw). Inputs: random token ids, 8-32 tokens.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

import ken
from bench.common import log
from bench.measure import median_ms
from service.engine.mixed import CostModel, GroupShape, calibrate, calibration_models

MINILM = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512}  # fmt: skip
TASKS = 16


def random_backbone(device: torch.device) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = {key: value for key, value in MINILM.items() if key != "model_type"}
    return BertModel(BertConfig(**config)).to(device).eval()


def synthetic_subnetwork(
    flat: ken.FlatParameters, config: dict, k: int, embedding_rows: float, seed: int
) -> ken.Subnetwork:
    """k random columns of every row (of the word embeddings: of a random ``embedding_rows`` share of rows)."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, slot in flat.layout.items():
        rows = slot.shape[0] if len(slot.shape) > 1 else 1
        cols = slot.numel // rows
        kept = min(k, cols)
        keep = torch.rand(rows, generator=gen) < embedding_rows if "word_embeddings" in name else None
        chosen_rows = int(keep.sum()) if keep is not None else rows
        columns = torch.rand(chosen_rows, cols, generator=gen).topk(kept, dim=1).indices.sort(dim=1).values
        row_ids = keep.nonzero().squeeze(1) if keep is not None else torch.arange(rows)
        counts = torch.zeros(rows, dtype=torch.int64)
        counts[row_ids] = kept
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        positions = (row_ids[:, None] * cols + columns).reshape(-1)
        base = flat.buffer[slot.offset : slot.offset + slot.numel].cpu()
        values = base[positions] + 0.02 * torch.randn(positions.numel(), generator=gen)
        deltas[name] = ken.SparseRows(slot.shape, indptr, columns.reshape(-1).to(torch.uint16), values)
    labels = {i: f"label-{i}" for i in range(5)}
    config = {**config, "id2label": labels, "label2id": {v: i for i, v in labels.items()}}
    info = ken.SubnetworkInfo(backbone_fingerprint="synthetic", method="synthetic", k=k, id2label=labels, config=config)
    head = {"classifier.weight": 0.05 * torch.randn(5, config["hidden_size"], generator=gen),
            "classifier.bias": torch.zeros(5)}  # fmt: skip
    return ken.Subnetwork(deltas, head, info)


def load_tasks(args: argparse.Namespace, device: torch.device):
    """(backbone, flat, [(name, subnetwork)], real) on ``device``."""
    real = False
    subnetworks: list[tuple[str, ken.Subnetwork]] = []
    if not args.synthetic:
        try:
            from bench import common

            backbone = ken.load_backbone_model(common.base_dir()).to(device).eval()
            cached = sorted((common.CACHE / "subnetworks").glob("*.safetensors"))
            if len(cached) >= args.tasks:
                subnetworks = [(path.stem, ken.load_file(path)) for path in cached[: args.tasks]]
                real = True
        except ImportError:
            backbone = None
    if not subnetworks:
        backbone = random_backbone(device)
    flat = ken.FlatParameters(backbone)
    if not subnetworks:
        config, ks = backbone.config.to_dict(), (25, 50, 100, 200)
        subnetworks = [
            (f"synthetic-k{ks[i % 4]}-{i}", synthetic_subnetwork(flat, config, ks[i % 4], 0.3, i))
            for i in range(args.tasks)
        ]
    return backbone, flat, subnetworks, real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--synthetic", action="store_true", help="random backbone and synthetic plans")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--task-counts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--tasks", type=int, default=TASKS, help="distinct tasks (the largest task count needs as many)"
    )
    parser.add_argument("--output", type=Path, default=Path(".cache/bench/mixed_results.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    load = os.getloadavg()
    started = time.monotonic()
    backbone, flat, subnetworks, real = load_tasks(args, device)
    plans = [ken.DeltaPlan(sub, flat) for _, sub in subnetworks]
    models = [ken.attach_head(backbone, sub.info, sub.head) for _, sub in subnetworks]
    swapper = ken.Swapper(flat)
    mixed = ken.MixedForward(backbone, flat)
    log(f"{len(plans)} {'real' if real else 'synthetic'} tasks on {device} ({torch.get_num_threads()} threads), "
        f"{statistics.mean(p.nnz for p in plans) / 1e6:.2f} M entries on average; "
        f"prepared in {time.monotonic() - started:.0f} s")  # fmt: skip
    bench = Bench(backbone, plans, models, swapper, mixed, device, args.repeats)
    cost: CostModel = bench.calibrate()
    log(f"cost model: {json.dumps({k: f'{v:.3g}' for k, v in cost.__dict__.items()})}")
    results = []
    for batch in args.batches:
        for count in args.task_counts:
            if count <= batch:
                result = bench.cell(batch, count, cost)
                results.append(result)
                log(f"N={batch:<3} T={count:<3} swap {result['swap_ms']:8.1f} ms  mixed {result['mixed_ms']:8.1f} ms  "
                    f"dedicated {result['dedicated_ms']:8.1f} ms  (model: swap {result['estimate_swap_ms']:.1f}, "
                    f"mixed {result['estimate_mixed_ms']:.1f})  max|diff| {result['max_abs_diff']:.1e}")  # fmt: skip
    meta = {"device": str(device), "threads": torch.get_num_threads(), "real_tasks": real, "load_average": load,
            "load_average_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "cost_model": cost.__dict__, "tasks": [name for name, _ in subnetworks]}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    report(results, meta)


class Bench:
    """The 16 tasks three ways on one backbone; :meth:`cell` measures one batch shape."""

    def __init__(self, backbone, plans, models, swapper: ken.Swapper, mixed: ken.MixedForward, device, repeats: int):
        self.backbone, self.plans, self.models = backbone, plans, models
        self.swapper, self.mixed, self.device, self.repeats = swapper, mixed, device, repeats
        cuda = device.type == "cuda"
        self.synchronize = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
        self.gen = torch.Generator().manual_seed(0)
        self.dedicated = []
        with torch.no_grad():
            for plan, model in zip(plans, models, strict=True):
                swapper.apply(plan)
                self.dedicated.append(copy.deepcopy(model))
                swapper.revert()

    def inputs(self, lengths: list[int]) -> dict[str, torch.Tensor]:
        longest = max(lengths)
        ids = torch.randint(1000, self.backbone.config.vocab_size, (len(lengths), longest), generator=self.gen)
        mask = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).long()
        return {"input_ids": (ids * mask).to(self.device), "attention_mask": mask.to(self.device)}

    def calibrate(self) -> CostModel:
        def inputs(n: int, length: int) -> dict[str, torch.Tensor]:
            ids = torch.full((n, length), 1000, dtype=torch.long, device=self.device)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        with torch.no_grad():
            return calibrate(self.swapper, self.mixed, calibration_models(self.backbone), inputs)

    def time_ms(self, run) -> float:
        return median_ms(run, self.repeats, warmup=1, synchronize=self.synchronize)

    def cell(self, batch: int, count: int, cost: CostModel) -> dict:
        """N = ``batch`` inputs of 8-32 tokens spread evenly over the first ``count`` tasks."""
        tasks = list(range(count))
        lengths = torch.randint(8, 33, (batch,), generator=self.gen).tolist()
        rows, start = [], 0
        for i in tasks:
            share = batch // count + (1 if i < batch % count else 0)
            rows.append(lengths[start : start + share])
            start += share
        together = self.inputs(lengths)
        own, start = [], 0
        for r in rows:  # each task's rows as a batch of their own (padded to their own longest)
            longest = max(r)
            own.append({name: t[start : start + len(r), :longest] for name, t in together.items()})
            start += len(r)
        groups = [ken.MixedGroup(self.plans[t], self.models[t], len(r)) for t, r in zip(tasks, rows, strict=True)]
        previous = self.plans[count % len(self.plans)] if count > 1 else self.plans[0]  # the last batch's task

        def swap_path() -> None:
            self.swapper.switch(previous)
            for t, inputs in zip(tasks, own, strict=True):
                self.swapper.switch(self.plans[t])
                self.models[t](**inputs)

        def mixed_pass() -> None:
            self.swapper.revert()
            self.mixed.logits(groups, together)

        def dedicated() -> None:
            for t, inputs in zip(tasks, own, strict=True):
                self.dedicated[t](**inputs)

        with torch.no_grad():
            mixed_out = self.mixed.logits(groups, together)
            diffs = []
            for t, inputs, got in zip(tasks, own, mixed_out, strict=True):
                self.swapper.switch(self.plans[t])
                diffs.append(float((got - self.models[t](**inputs).logits).abs().max()))
            self.swapper.revert()
            timings = {"swap": self.time_ms(swap_path), "mixed": self.time_ms(mixed_pass),
                       "dedicated": self.time_ms(dedicated)}  # fmt: skip
            self.swapper.revert()
        shapes = [GroupShape(self.plans[t], len(r), max(r)) for t, r in zip(tasks, rows, strict=True)]
        estimate = {"swap": 1000 * cost.swap_path_s(shapes, previous),
                    "mixed": 1000 * cost.mixed_s(shapes, previous, self.mixed)}  # fmt: skip
        return {"inputs": batch, "tasks": count, **{f"{k}_ms": v for k, v in timings.items()},
                **{f"estimate_{k}_ms": v for k, v in estimate.items()}, "max_abs_diff": max(diffs)}  # fmt: skip


def report(results: list[dict], meta: dict) -> None:
    print(f"\n{'real' if meta['real_tasks'] else 'synthetic'} tasks, {meta['device']}, {meta['threads']} threads, "
          f"{meta['date']}, load average (1 min) {meta['load_average'][0]:.1f} at start, "
          f"{meta['load_average_end'][0]:.1f} at end\n")  # fmt: skip
    print("| inputs | tasks | swap ms | mixed ms | dedicated ms | mixed / swap time | dedicated / mixed time "
          "| cost model: swap / mixed ms | picks | right? | max abs diff |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in results:
        pick = "mixed" if r["estimate_mixed_ms"] < r["estimate_swap_ms"] else "swap"
        right = (r["mixed_ms"] < r["swap_ms"]) == (pick == "mixed")
        print(f"| {r['inputs']} | {r['tasks']} | {r['swap_ms']:.1f} | {r['mixed_ms']:.1f} | {r['dedicated_ms']:.1f} | "
              f"{r['mixed_ms'] / r['swap_ms']:.2f} | {r['dedicated_ms'] / r['mixed_ms']:.2f} | "
              f"{r['estimate_swap_ms']:.1f} / {r['estimate_mixed_ms']:.1f} | {pick} | {'yes' if right else 'NO'} | "
              f"{r['max_abs_diff']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
