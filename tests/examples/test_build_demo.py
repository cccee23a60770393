"""examples.build_demo's pieces that need no real fine-tune: what it records, prints and asks a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ken
from examples import build_demo
from tests.tiny_models import TinyPair

RUN_DEMO = Path(__file__).resolve().parents[2] / "scripts" / "run-demo.sh"


def test_every_task_trains_at_the_length_the_demo_serves_with(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_demo.main(["--print-max-length"]) == 0
    served = int(capsys.readouterr().out)
    assert {recipe.max_length for recipe in build_demo.RECIPES.values()} == {served}
    assert set(build_demo.EXAMPLES) == set(build_demo.RECIPES)
    assert build_demo.DEFAULT_METHOD == "magnitude"  # the selector docs/results.md recommends at k=100
    assert 'max_length="$(python -m examples.build_demo --print-max-length)"' in RUN_DEMO.read_text()


def test_an_extraction_records_method_k_and_kept_percent(
    tiny_bert: TinyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_demo, "ensure_finetuned", lambda out, task, base, progress: (tiny_bert.finetuned, False))
    build_demo.write_manifest(tmp_path, {"version": build_demo.MANIFEST_VERSION, "tasks": {"bbc-news": {}}})
    path, built = build_demo.ensure_subnetwork(tmp_path, "bbc-news", tiny_bert.base, 6, progress=False)
    assert built and ken.load_file(path).info.method == "magnitude"
    entry = json.loads((tmp_path / build_demo.MANIFEST).read_text())["tasks"]["bbc-news"]["subnetwork"]
    numel = build_demo.backbone_numel(tiny_bert.base)
    assert entry["method"] == "magnitude" and entry["k"] == 6 and entry["max_length"] == build_demo.MAX_LENGTH
    assert entry["kept_percent"] == round(100 * entry["kept_entries"] / numel, 2) > 0
    assert "bbc-news: magnitude k=6, " in build_demo.describe_task(tmp_path, "bbc-news")

    # Up to date: nothing redone. An entry lacking what this version records (older manifest): redone.
    assert build_demo.ensure_subnetwork(tmp_path, "bbc-news", tiny_bert.base, 6, progress=False) == (path, False)
    manifest = build_demo.read_manifest(tmp_path)
    del manifest["tasks"]["bbc-news"]["subnetwork"]["kept_percent"]
    build_demo.write_manifest(tmp_path, manifest)
    assert build_demo.ensure_subnetwork(tmp_path, "bbc-news", tiny_bert.base, 6, progress=False)[1]
