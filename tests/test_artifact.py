"""Saving and loading compiled models."""

import json
import subprocess
import sys

import pytest
import torch
from model_cases import get_case

import tgraph
from tgraph.artifact import ArtifactError


def _compile(name="bert-tiny", backend="reference"):
    case = get_case(name)
    return case, tgraph.compile(case.model, case.make(2, 16, 0), backend=backend)


@pytest.mark.parametrize("backend", ["reference", "ort", "torch"])
def test_save_then_load_in_a_fresh_process_without_model_code(tmp_path, backend):
    case, cm = _compile(backend=backend)
    cm.save(tmp_path / "art")
    inputs = case.make(3, 7, 5)
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(case.model(**inputs), tmp_path / "want.pt")
    code = f"""
import sys, torch
sys.modules["tgraph.models"] = None  # no model code: importing the zoo would fail
import tgraph
cm = tgraph.load({str(tmp_path / "art")!r})
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
want = torch.load({str(tmp_path / "want.pt")!r})
got = cm(**inputs)
assert isinstance(got, dict), type(got)
for k in want:
    torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_manifest_describes_the_artifact(tmp_path):
    _, cm = _compile()
    cm.save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["format"] == "tgraph-artifact" and manifest["version"] == 1
    assert manifest["backend"] == "reference" and manifest["device"] == "cpu"
    assert manifest["pipeline"] == cm.pipeline
    assert manifest["tgraph_version"] == tgraph.__version__
    assert [i["name"] for i in manifest["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert manifest["inputs"][0]["type"] == "i64[batch,seq]"


def test_hugging_face_model_output_comes_back(tmp_path):
    case, cm = _compile("hf-distilbert")
    cm.save(tmp_path / "art")
    loaded = tgraph.load(tmp_path / "art")
    inputs = case.make(2, 5, 3)
    got = loaded(**inputs)
    assert type(got).__name__ == "BaseModelOutput"
    with torch.no_grad():
        want = case.model(**inputs)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-4, atol=1e-4)


def test_failed_save_leaves_the_old_artifact_intact(tmp_path, monkeypatch):
    case, cm = _compile()
    cm.save(tmp_path / "art")
    before = {p.name: p.read_bytes() for p in (tmp_path / "art").iterdir()}

    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        cm.save(tmp_path / "art")
    after = {p.name: p.read_bytes() for p in (tmp_path / "art").iterdir()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tgraph")] == []
    loaded = tgraph.load(tmp_path / "art")
    inputs = case.make(1, 4, 1)
    torch.testing.assert_close(
        loaded(**inputs)["last_hidden_state"], cm(**inputs)["last_hidden_state"]
    )


def test_overwrite_replaces_an_artifact_but_not_other_directories(tmp_path):
    _, cm = _compile()
    cm.save(tmp_path / "art")
    cm.save(tmp_path / "art")  # replacing an artifact is fine
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ArtifactError, match="not a tgraph artifact; refusing"):
        cm.save(other)
    assert (other / "cat.jpg").read_bytes() == b"meow"


def test_loading_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="not a directory"):
        tgraph.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        tgraph.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        tgraph.load(tmp_path / "bad")
