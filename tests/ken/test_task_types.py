"""Task types beyond sequence classification: what extraction records, and materialised models that load as
sentence-transformers, transformers pipelines and cross-encoders do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer, pipeline

import ken
from ken.entities import group_simple, token_labels, without_ignored
from ken.pooling import Pooling, read_pooling
from ken.taskmodel import task_outputs
from tests.tiny_models import TinyPair

TEXTS = ["the team won the cup match", "bank shares fell as profit growth slowed", "a film music award"]


@pytest.mark.parametrize("kind", ["token-classification", "pair-scoring", "feature-extraction"])
def test_extraction_records_the_task_type_from_the_checkpoint(
    kind: str, tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path]
) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert_kinds[kind], k=8, progress=False)
    again = ken.load_bytes(ken.save_bytes(sub))
    assert again.info.task_type == kind
    if kind == "feature-extraction":
        assert again.info.pooling == Pooling(mode="mean", normalize=True, max_seq_length=None)
        assert sub.head == {}
    else:
        assert again.info.pooling is None and sub.head


def test_a_cross_encoder_is_a_sequence_classifier_unless_marked(tiny_bert: TinyPair, tmp_path: Path) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False)
    assert sub.info.task_type == "sequence-classification"
    forced = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False, task_type="pair-scoring")
    assert forced.info.task_type == "pair-scoring"
    with pytest.raises(ken.KenError, match="unknown task type"):
        ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False, task_type="generation")


def test_an_embedding_fine_tune_without_sentence_transformers_files_takes_the_backbones_pooling(
    tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path], tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    AutoModel.from_pretrained(tiny_bert_kinds["feature-extraction"]).save_pretrained(plain)
    assert ken.extract(tiny_bert.base, plain, k=8, progress=False).info.pooling == Pooling()  # base has none
    with_st = tmp_path / "st-base"
    AutoModel.from_pretrained(tiny_bert.base).save_pretrained(with_st)
    ken.pooling.write_sentence_transformers_files(with_st, Pooling("cls", True, 32), 32)
    assert ken.extract(with_st, plain, k=8, progress=False).info.pooling == Pooling("cls", True, 32)


def test_unsupported_sentence_transformers_pipelines_are_refused(tmp_path: Path) -> None:
    modules = [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ken.KenError, match="Dense is not supported"):
        read_pooling(tmp_path)


def test_invalid_pooling_metadata_is_a_format_error(tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path]) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert_kinds["feature-extraction"], k=8, progress=False)
    data = ken.save_bytes(sub)
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    meta = json.loads(header["__metadata__"]["ken"])
    meta["pooling"] = {"mode": "weightedmean", "normalize": True}
    header["__metadata__"]["ken"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    with pytest.raises(ken.SubnetworkFormatError, match="pooling mode 'weightedmean' is not supported"):
        ken.load_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + header_length :])


def test_materialised_embedding_task_is_a_sentence_transformer_that_embeds_as_the_task_model(
    tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path], tmp_path: Path
) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert_kinds["feature-extraction"], k=8, progress=False)
    folder = ken.materialize(tiny_bert.base, sub, tmp_path / "model")
    expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    backbone = ken.load_backbone_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        outputs = task_outputs(backbone, sub.info, dict(tokenizer(TEXTS, padding=True, return_tensors="pt")))
    vectors = torch.nn.functional.normalize(torch.stack(outputs), dim=1)
    torch.testing.assert_close(vectors, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the delta matters: the pretrained backbone embeds differently
        pretrained = task_outputs(
            ken.load_backbone_model(tiny_bert.base), sub.info, dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
        )
    assert not torch.allclose(torch.nn.functional.normalize(torch.stack(pretrained), dim=1), expected, atol=1e-3)


def test_materialised_cross_encoder_scores_pairs(
    tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path], tmp_path: Path
) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert_kinds["pair-scoring"], k=8, progress=False)
    folder = ken.materialize(tiny_bert.base, sub, tmp_path / "model")
    scores = CrossEncoder(str(folder), device="cpu").predict([("the cup", text) for text in TEXTS])
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()  # the sigmoid of one logit


def test_simple_aggregation_equals_the_transformers_pipeline(
    tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path], tmp_path: Path
) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert_kinds["token-classification"], k=8, progress=False)
    folder = ken.materialize(tiny_bert.base, sub, tmp_path / "model")
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    texts = [*TEXTS, "Bank  of the  cup, zzz unknownword team!"]
    found_groups = 0
    for text in texts:
        encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
        tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        per_token = token_labels(
            text,
            logits,
            labels,
            tokens,
            encoded["offset_mapping"],
            encoded["special_tokens_mask"],
            unknown_token=tokenizer.unk_token,
        )
        for strategy, ours in (
            ("none", per_token),
            ("simple", group_simple(per_token, tokenizer.convert_tokens_to_string)),
        ):
            expected = tagger(text, aggregation_strategy=strategy)
            got = [vars(entity) for entity in without_ignored(ours, ["O"])]
            assert [{k: v for k, v in e.items() if k != "score"} for e in got] == [
                {k: (int(v) if k in ("index", "start", "end") else v) for k, v in e.items() if k != "score"}
                for e in expected
            ], (strategy, text)
            assert [e["score"] for e in got] == pytest.approx([float(e["score"]) for e in expected], rel=1e-5)
            found_groups += len(got) if strategy == "simple" else 0
    assert found_groups > 0  # the comparison saw real entity groups
