"""The swapper on a CUDA device: fused Triton kernels and the torch path give the same bits.

Skipped without a GPU (CI has none); run on a GPU machine with ``pytest tests/ken/test_swap_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

import ken
from ken import gpu_kernels
from tests.tiny_models import TinyPair


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("keep_originals", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_apply_switch_revert_on_cuda_are_exact(
    tiny_bert: TinyPair, tiny_bert_other_task, fused: bool, keep_originals: bool
) -> None:
    if fused and not gpu_kernels.available(torch.device("cuda")):
        pytest.skip("Triton is not installed")
    subs = [
        ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False),
        ken.extract(tiny_bert.base, tiny_bert_other_task, k=9, progress=False),
    ]
    cpu_flat = ken.FlatParameters(ken.load_backbone_model(tiny_bert.base))
    cpu_swapper = ken.Swapper(cpu_flat)
    expected = []
    for sub in subs:  # the reference: the CPU torch path
        cpu_swapper.apply(ken.DeltaPlan(sub, cpu_flat))
        expected.append(cpu_flat.buffer.clone())
        cpu_swapper.revert()
    flat = ken.FlatParameters(ken.load_backbone_model(tiny_bert.base).cuda())
    pristine = flat.buffer.clone()
    first, second = (ken.DeltaPlan(sub, flat) for sub in subs)
    swapper = ken.Swapper(flat, fused_kernels=fused, keep_originals=keep_originals)
    for _ in range(2):  # with keep_originals, the second round runs on the plans' kept originals
        swapper.apply(first)
        assert torch.equal(flat.buffer.cpu(), expected[0])
        swapper.switch(second)
        assert torch.equal(flat.buffer.cpu(), expected[1])
        swapper.switch(first)
        assert torch.equal(flat.buffer.cpu(), expected[0])
        swapper.revert()
        assert torch.equal(flat.buffer, pristine)


def test_fused_kernels_are_off_on_the_cpu() -> None:
    assert not gpu_kernels.available(torch.device("cpu"))
    flat = ken.FlatParameters(torch.nn.Linear(4, 4))
    assert ken.Swapper(flat).fused_kernels is False
