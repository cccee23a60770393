"""Generation in the library: the sampling rule, the KV-cached decode state, causal-LM subnetworks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import ken
from ken.generation import DecodeState, SamplingParams, next_token
from tests.tiny_models import make_gpt2_lm_pair


@pytest.fixture(scope="module")
def lm_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_gpt2_lm_pair(tmp_path_factory.mktemp("tiny-lm"))


def greedy(model: torch.nn.Module, prompt: list[int], count: int) -> list[int]:
    state = DecodeState(list(prompt))
    for _ in range(count):
        state.append(next_token(state.step(model), SamplingParams(temperature=0)))
    return state.generated


@pytest.mark.parametrize("seed", range(5))
def test_temperature_zero_picks_the_most_likely_token(seed: int) -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(seed))
    assert next_token(logits, SamplingParams(temperature=0)) == int(logits.argmax())


def test_a_tiny_nucleus_keeps_only_the_most_likely_token() -> None:
    logits = torch.tensor([0.0, 0.5, 0.4, 0.1])
    gen = torch.Generator().manual_seed(0)
    draws = {next_token(logits, SamplingParams(temperature=1.0, top_p=1e-6), gen) for _ in range(100)}
    assert draws == {1}


def test_top_p_samples_only_inside_the_nucleus() -> None:
    logits = torch.tensor([0.5, 0.3, 0.2]).log()  # probabilities 0.5, 0.3, 0.2
    gen = torch.Generator().manual_seed(0)
    draws = [next_token(logits, SamplingParams(temperature=1.0, top_p=0.6), gen) for _ in range(300)]
    assert set(draws) == {0, 1}  # 0.5 < 0.6, so the second token is needed; the third never


def test_the_same_seed_draws_the_same_tokens() -> None:
    logits = torch.randn(100, generator=torch.Generator().manual_seed(3))
    params = SamplingParams(temperature=1.5, top_p=0.9)

    def draws(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [next_token(logits, params, gen) for _ in range(20)]

    assert draws(7) == draws(7)


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(-0.1, 1.0), (math.nan, 1.0), (math.inf, 1.0), (1.0, 0.0), (1.0, 1.5)]
)
def test_bad_sampling_parameters_are_refused(temperature: float, top_p: float) -> None:
    with pytest.raises(ValueError, match=r"temperature|top_p"):
        SamplingParams(temperature=temperature, top_p=top_p)


def test_logits_of_more_than_one_position_are_refused() -> None:
    with pytest.raises(ValueError, match="one position"):
        next_token(torch.zeros(2, 5), SamplingParams())


def test_an_empty_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DecodeState([])


def test_cached_steps_give_the_logits_of_a_full_forward(lm_pair: tuple[Path, list[Path]]) -> None:
    _, finetunes = lm_pair
    model = AutoModelForCausalLM.from_pretrained(finetunes[0]).eval()
    state = DecodeState([5, 9, 12])
    with torch.no_grad():
        for token in (30, 41, 7, 99):
            cached = state.step(model)
            full = model(input_ids=torch.tensor([state.tokens])).logits[0, -1]
            torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
            state.append(token)


def test_a_causal_lm_subnetwork_generates_as_its_materialised_model(
    lm_pair: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    base, finetunes = lm_pair
    sub = ken.extract(base, finetunes[0], k=8, progress=False)
    assert sub.info.task_type == "text-generation"
    assert sub.head == {}  # the output layer is tied to the input embeddings: the delta covers it
    backbone = ken.load_backbone_model(base)
    flat = ken.FlatParameters(backbone)
    model = ken.attach_head(backbone, sub.info, sub.head)
    reference = AutoModelForCausalLM.from_pretrained(ken.materialize(base, sub, tmp_path / "m")).eval()
    prompt = [3, 17, 40]
    with torch.no_grad():
        expected = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
        swapper = ken.Swapper(flat)
        swapper.apply(ken.DeltaPlan(sub, flat))
        assert greedy(model, prompt, 12) == expected
        swapper.revert()
        assert greedy(model, prompt, 12) != expected  # the pristine backbone continues differently
