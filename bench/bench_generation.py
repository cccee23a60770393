"""Swap cost against a decode step for text generation (issue: task kinds, 4).

Run from the repository root:  python -m bench.bench_generation [--layers 6] [--hidden 768] [--k 100]

No pretrained causal LM installs from the package index here, so the backbone is a GPT-2 built
from its config with random weights (default: distilgpt2's shape, 6 layers x 768, vocabulary 50,257,
82 M parameters) and the two tasks keep ``k`` entries in every row of every tensor, at random columns (a fine-tune
that changed every row, cut to ``k`` per row: a swap's cost depends on how many entries there are
and where, not on which of a row's values were kept). Timings do not depend on the weight values.

Per context length (the tokens already in the sequence's KV cache): the median time of one decode
step of one sequence (``ken.generation.DecodeState.step``, the owner's unit of work), of one task
change (``Swapper.switch`` from task A to task B, as the owner makes it) and of a prefill of that
many tokens. The ratio says how many decode steps one task change costs, i.e. how much interleaving
two tasks' generations after every token would slow them down.
"""

from __future__ import annotations

import argparse
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import GPT2Config, GPT2Model

import ken
from bench.measure import median_ms
from ken.backbone import floating_state
from ken.generation import DecodeState


def random_task(base: GPT2Model, config: GPT2Config, k: int, seed: int) -> ken.Subnetwork:
    """A causal-LM task whose every row keeps ``k`` entries at random columns (a swap costs the same)."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, tensor in floating_state(base.state_dict()).items():
        rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)
        keep = min(k, rows.shape[1])
        columns = torch.rand(rows.shape, generator=gen).topk(keep, dim=1).indices.sort(dim=1).values
        values = rows.gather(1, columns) + 1e-3
        indptr = torch.arange(0, rows.shape[0] * keep + 1, keep, dtype=torch.int64)
        indices = columns.reshape(-1).to(torch.int32)
        deltas[name] = ken.SparseRows(tuple(tensor.shape), indptr, indices, values.reshape(-1))
    info = ken.SubnetworkInfo(
        backbone_fingerprint=ken.fingerprint(base.state_dict()),
        method="random",
        k=k,
        base_prefix="transformer.",
        task_type="text-generation",
        config={**config.to_dict(), "architectures": ["GPT2LMHeadModel"]},
    )
    return ken.Subnetwork(deltas=deltas, head={}, info=info)


def build_tasks(layers: int, hidden: int, k: int) -> tuple[GPT2Model, list[ken.Subnetwork]]:
    config = GPT2Config(n_layer=layers, n_embd=hidden, n_head=hidden // 64)
    torch.manual_seed(0)
    base = GPT2Model(config).eval()
    return base, [random_task(base, config, k, seed) for seed in (1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--contexts", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    backbone, (task_a, task_b) = build_tasks(args.layers, args.hidden, args.k)
    flat = ken.FlatParameters(backbone)
    swapper = ken.Swapper(flat)
    plans = [ken.DeltaPlan(task, flat) for task in (task_a, task_b)]
    model = ken.attach_head(backbone, task_a.info, task_a.head)
    parameters = sum(p.numel() for p in backbone.parameters())
    print(
        f"GPT-2 {args.layers} layers x {args.hidden}, {parameters / 1e6:.1f} M parameters; "
        f"k={args.k}: {plans[0].nnz / 1e6:.2f} M entries per task; {torch.get_num_threads()} threads"
    )
    swapper.apply(plans[0])
    current = [0]

    def switch() -> None:
        current[0] = 1 - current[0]
        swapper.switch(plans[current[0]])

    switch_ms = median_ms(switch, args.repeats)
    print("| context tokens | decode step ms | prefill ms | task change ms | task change / decode step |")
    print("|---:|---:|---:|---:|---:|")
    for context in args.contexts:
        tokens = [int(t) for t in torch.randint(0, 50_000, (context,), generator=torch.Generator().manual_seed(0))]
        prefill_ms = median_ms(lambda tokens=tokens: DecodeState(list(tokens)).step(model), max(3, args.repeats // 3))
        state = DecodeState(list(tokens))
        state.step(model)

        def step(state: DecodeState = state) -> None:
            state.append(7)
            state.step(model)

        step_ms = median_ms(step, args.repeats)
        print(f"| {context} | {step_ms:.1f} | {prefill_ms:.1f} | {switch_ms:.1f} | {switch_ms / step_ms:.1f}x |")
    swapper.revert()


if __name__ == "__main__":
    main()
