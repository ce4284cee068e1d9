"""canonicalize-mha: nn.MultiheadAttention's sequence-first head shuffles become batch-first
head splits, so that layout can switch its attention to bsd and no transpose is left."""

import pytest
import torch
from pass_helpers import check_pass, matches, trace_module

from tgraph.passes.manager import format_pipeline, optimize, parse_pipeline


def _encoder(layers: int = 2) -> torch.nn.Module:
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _before_canonicalize() -> str:
    text = format_pipeline(parse_pipeline("default"))
    return text[: text.index("canonicalize-mha")].rstrip(",")


@pytest.mark.parametrize("name", ["nn-encoder", "nn-encoder-padding", "nn-transformer"])
def test_model_outputs_unchanged(name, traced_case):
    _, g = traced_case(name)
    prepared, _ = optimize(g, _before_canonicalize())
    out, records = check_pass(prepared, "canonicalize-mha,layout,dce")
    assert matches(records, "mha-heads") > 0 and matches(records, "mha-out-proj") > 0


def test_default_leaves_no_activation_transpose_in_an_encoder():
    g = trace_module(_encoder(), torch.randn(2, 16, 32))
    out, records = optimize(g, "default")
    hist = out.op_histogram()
    assert "permute" not in hist and "gather" not in hist, hist
    assert hist["attention"] == 2
    assert all(n.attrs["layout"] == "bsd" for n in out.nodes if n.op == "attention")
    rec = next(r for r in records if r.name == "canonicalize-mha")
    assert rec.stats["matches"] == {"mha-heads": 6, "mha-out-proj": 2}


def test_near_miss_is_reported():
    # Heads selected from a plain (T, B, E) tensor, not MultiheadAttention's packed shuffle.
    class Heads(torch.nn.Module):
        def forward(self, x):  # x: (2, T, B, E)
            q = x.select(0, 0)  # (T, B, E)
            t, b, e = q.shape
            return q.reshape(t, b * 4, e // 4).transpose(0, 1).reshape(b, 4, t, e // 4)

    g = trace_module(Heads(), torch.randn(2, 6, 3, 32))
    g, _ = optimize(g, "simplify,dce")
    out, records = optimize(g, "canonicalize-mha")
    reasons = [r["reason"] for r in records[-1].stats["rejected"]]
    assert out.dump() == g.dump()
    assert any("packed q/k/v shuffle" in r for r in reasons), reasons
