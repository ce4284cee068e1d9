"""The sweep tool itself (tools/hf_sweep.py): when it writes the docs, and which sizes it
checks a traced graph at."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

import hf_sweep  # noqa: E402

ARCHS = {"bert": "BertModel", "gpt2": "GPT2Model"}
DOCS = {
    "README.md": f"intro\n{hf_sweep.FIGURE_BEGIN}\nthe full figure\n{hf_sweep.FIGURE_END}\n",
    "docs/models.md": f"head\n{hf_sweep.BEGIN}\nthe full table\n{hf_sweep.END}\ntail\n",
}


def _record(arch: str) -> dict:
    return {"arch": arch, "class": ARCHS[arch], "modality": "text", "exports": "yes",
            "reference": "ok", "ort": "ok", "torch": "ok", "failure": ""}  # fmt: skip


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A checkout of the two docs in tmp_path, the tool pointed at it, two architectures."""
    for name, text in DOCS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(hf_sweep, "ROOT", str(tmp_path))
    monkeypatch.setattr(hf_sweep, "architectures", lambda: dict(ARCHS))
    monkeypatch.setattr(hf_sweep, "preload", lambda: None)
    return tmp_path


def _cache(tmp_path, archs) -> str:
    out = tmp_path / "cache"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({a: _record(a) for a in archs}))
    return str(out)


def _docs(root) -> dict[str, str]:
    return {name: (root / name).read_text() for name in DOCS}


def test_a_partial_sweep_leaves_the_docs_alone(root, monkeypatch):
    # --only into a scratch cache: before, this rewrote the full table from one record
    ran = []
    monkeypatch.setattr(hf_sweep, "sweep", lambda todo, *a: ran.extend(todo))
    monkeypatch.setattr(hf_sweep, "out_of_scope", lambda todo, cache: todo)
    hf_sweep.main(["--out", _cache(root, ["bert"]), "--only", "bert"])
    assert ran == ["bert"] and _docs(root) == DOCS


def test_writing_the_docs_from_an_incomplete_cache_is_refused(root):
    with pytest.raises(SystemExit, match=r"no record of 1 of the 2 architectures \(gpt2\)"):
        hf_sweep.main(["--out", _cache(root, ["bert"]), "--table-only"])
    assert _docs(root) == DOCS


def test_a_complete_cache_rewrites_table_and_figure(root):
    hf_sweep.main(["--out", _cache(root, ["bert", "gpt2"]), "--table-only"])
    docs = _docs(root)
    assert "**2 (100%) compile" in docs["README.md"] and "the full figure" not in docs["README.md"]
    assert "| gpt2 | GPT2Model | text | yes | ok | ok | ok |" in docs["docs/models.md"]
    assert docs["docs/models.md"].endswith(f"{hf_sweep.END}\ntail\n")


def test_help_says_when_the_docs_are_written(capsys):
    with pytest.raises(SystemExit):
        hf_sweep.main(["--help"])
    assert "refused unless it holds every architecture" in " ".join(capsys.readouterr().out.split())


class PositionLoop(torch.nn.Module):
    """A Python loop over the positions (Mamba's and RWKV's slow path): export specializes the
    sequence to its traced length."""

    def forward(self, input_ids):  # (B, T) -> (B, 1)
        out = input_ids[:, :1]
        for i in range(1, input_ids.shape[1]):
            out = out + input_ids[:, i : i + 1]
        return out


def test_a_sequence_the_code_specializes_is_static():
    # the shared-dims export fails ("specialized it to be a constant (6)") and the Dim.AUTO
    # retry returns the dim as a SymInt whose expression is 6: static, not dynamic
    from hf_sweep_case import dynamic_dims

    from tgraph.frontend.trace import export

    ep = export(PositionLoop(), (), {"input_ids": torch.randint(0, 9, (2, 6))})
    assert dynamic_dims(ep, "input_ids") == (True, False)


class LongOnly(torch.nn.Module):
    """Branches on the length: the trace at 16 tokens guards ``seq > 8``."""

    main_input_name = "input_ids"

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=100)
        self.emb = torch.nn.Embedding(100, 8)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        return h[:, 4:] * 2 if input_ids.shape[1] > 8 else h


def test_the_check_sizes_are_the_first_two_the_traced_guards_accept():
    # before, the sweep checked (1, 7) and (3, 11) whatever the trace assumed: (1, 7) breaks
    # 'seq > 8' and the model failed the sweep though it is compiled correctly
    from hf_sweep_case import BACKENDS, run_backends
    from hf_sweep_config import make_inputs, shapes

    model = LongOnly().eval()
    traced, candidates = shapes(model, "text")
    record = {}
    results = run_backends(
        model, "text", make_inputs(model, "text", *traced, 0), candidates, record
    )
    assert results == dict.fromkeys(BACKENDS, "ok")
    assert record["checked_sizes"] == [[3, 11], [1, 11]]
    assert sorted(record["refused_sizes"]) == ["1x7", "3x7"]
    assert "sequence length 7 is below 9" in record["refused_sizes"]["1x7"]


def test_a_graph_no_candidate_size_fits_fails_the_check():
    from hf_sweep_case import BACKENDS, run_backends
    from hf_sweep_config import make_inputs

    model = LongOnly().eval()
    record = {}
    results = run_backends(model, "text", make_inputs(model, "text", 2, 16, 0), [(1, 7)], record)
    assert results == dict.fromkeys(BACKENDS, results["ort"])
    assert results["ort"].startswith("sizes: the traced graph accepts 0 of the 1 candidate sizes")


class Masking(torch.nn.Module):
    """ViTMAE's random masking: noise sampled per patch unless given, its sort keeps half."""

    main_input_name = "pixel_values"

    def __init__(self, samples: bool = True):
        super().__init__()
        self.config = types.SimpleNamespace(image_size=4, num_channels=2)
        self.samples = samples

    def forward(self, pixel_values, noise=None):  # (B, 2, 4, 4) -> (B, 2, 2*4)
        patches = pixel_values.flatten(2)  # 4 patches of 4 pixels per channel
        patches = patches.reshape(*patches.shape[:2], 4, 4)
        if noise is None:
            b = pixel_values.shape[0]
            noise = torch.rand(b, 4) if self.samples else torch.arange(4.0).expand(b, 4)
        keep = noise.sort(dim=1).indices[:, :2]  # (B, 2); ViTMAE: argsort
        index = keep[:, None, :, None].expand(-1, patches.shape[1], -1, 4)
        return patches.gather(2, index).flatten(2)


def test_a_forward_that_samples_its_noise_gets_noise_as_an_input():
    # before, the sweep left ViTMAE to sample and tgraph rightly refused aten::rand
    from hf_sweep_case import BACKENDS, run_backends
    from hf_sweep_config import make_inputs, shapes

    model = Masking().eval()
    inputs = make_inputs(model, "vision", 3, 0, seed=1)
    assert inputs["noise"].shape == (3, 4) and "noise" not in make_inputs(
        Masking(False), "vision", 3, 0, 1
    )
    traced, candidates = shapes(model, "vision")
    record = {}
    results = run_backends(
        model, "vision", make_inputs(model, "vision", *traced, 0), candidates, record
    )
    assert results == dict.fromkeys(BACKENDS, "ok") and record["checked_sizes"] == [[1, 0], [3, 0]]
