"""fuse-rotary: x*cos + cat(-x2, x1)*sin -> rotary(x, cos, sin), and the interleaved form
x*cos + stack((-x[1::2], x[0::2]), -1).flatten(-2)*sin -> rotary(..., interleaved=True)."""

import functools

import pytest
import torch
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.passes.manager import optimize

CLEANUP = "simplify,fold-constants,cse,dce,fuse-rotary,fuse-attention,dce"


def _cos_sin(t, dim, interleaved=False):
    """Llama's tables (GPT-J's, each frequency twice in a row, when interleaved), computed in
    the graph from arange: (T, dim) each."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    freqs = torch.arange(t).float()[:, None] * inv_freq[None, :]
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), -1)
    return emb.cos(), emb.sin()


class Rope(torch.nn.Module):
    """Rotary on (B, H, T, D) heads, written the ways models write it.

    form: "neg" (HF's rotate_half), "mul" (-x2 as x2 * -1), "swapped" (the sum and products
      in the other order), "partial" (only the first half of each head rotates), and the
      negatives "halves" (cat(-x1, x2)), "uneven" (cut at 3 of 8) and "leak" (the rotated half
      is also returned). Interleaved (GPT-J's rotate_every_two): "pairs", "pairs-mul",
      "pairs-partial", and the negatives "pairs-swapped" (-x[0::2] first) and "pairs-stacked"
      (the pairs stacked on a new second-to-last axis).
    """

    def __init__(self, form="neg"):
        super().__init__()
        self.form = form
        self.proj = torch.nn.Linear(32, 32)

    def _rotate(self, x):
        if self.form.startswith("pairs"):
            even, odd = x[..., ::2], x[..., 1::2]
            if self.form == "pairs-swapped":
                return torch.stack((-even, odd), dim=-1).flatten(-2)
            if self.form == "pairs-stacked":
                return torch.stack((-odd, even), dim=-2).flatten(-2)
            neg = odd * -1 if self.form == "pairs-mul" else -odd
            return torch.stack((neg, even), dim=-1).flatten(-2)
        d = x.shape[-1]
        h = {"uneven": 3}.get(self.form, d // 2)
        x1, x2 = x[..., :h], x[..., h:]
        if self.form == "halves":
            return torch.cat((-x1, x2), dim=-1)
        if self.form == "mul":
            return torch.cat((x2 * -1, x1), dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.proj(x).view(b, t, 4, 8).transpose(1, 2)  # (B, 4, T, 8)
        partial = self.form in ("partial", "pairs-partial")
        rot, rest = (q[..., :4], q[..., 4:]) if partial else (q, None)
        cos, sin = _cos_sin(t, rot.shape[-1], self.form.startswith("pairs"))
        r = self._rotate(rot)
        out = sin * r + cos * rot if self.form == "swapped" else rot * cos + r * sin
        if rest is not None:
            out = torch.cat((out, rest), dim=-1)
        return (out, r) if self.form == "leak" else out


class Blocks(torch.nn.Module):
    def __init__(self, forms):
        super().__init__()
        self.blocks = torch.nn.ModuleDict({f: Rope(f) for f in forms})

    def forward(self, x):
        outs = []
        for block in self.blocks.values():
            out = block(x)
            outs.extend(out if isinstance(out, tuple) else (out,))
        return tuple(outs)


@functools.cache
def _traced(forms):
    return trace_module(Blocks(forms), torch.randn(2, 8, 32))


def _rotaries(graph):
    return {n.meta["module"].split(".")[1]: n for n in graph.nodes if n.op == "rotary"}


POSITIVE = ("neg", "mul", "swapped", "partial")
PAIRS = ("pairs", "pairs-mul", "pairs-partial")


@pytest.mark.parametrize("pipeline", ["fuse-rotary,dce", CLEANUP])
def test_rotate_half_forms_fuse(pipeline):
    out, records = check_pass(_traced(POSITIVE), pipeline, appear=["rotary"], disappear=["neg"])
    rot = _rotaries(out)
    assert sorted(rot) == sorted(POSITIVE)
    assert matches(records, "rotate-half") == len(POSITIVE)
    assert not any(n.attrs["interleaved"] for n in rot.values())
    assert rot["partial"].inputs[0].shape[-1] == 4
    assert rot["neg"].inputs[0].producer.op == "permute"  # x itself, the heads of the projection


@pytest.mark.parametrize("pipeline", ["fuse-rotary,dce", CLEANUP])
def test_interleaved_forms_fuse(pipeline):
    """GPT-J's rotate_every_two, as torch.export writes stack + flatten, fuses; the reference
    interpreter's outputs (check_pass) hold at other batch and sequence sizes."""
    out, records = check_pass(_traced(PAIRS), pipeline, appear=["rotary"], disappear=["neg"])
    rot = _rotaries(out)
    assert sorted(rot) == sorted(PAIRS)
    assert matches(records, "rotate-pairs") == len(PAIRS)
    assert all(n.attrs["interleaved"] for n in rot.values())
    assert rot["pairs-partial"].inputs[0].shape[-1] == 4


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_interleaved_rotary_runs_on_the_backends(backend):
    import tgraph

    model = Blocks(PAIRS).eval()
    x = torch.randn(2, 8, 32)
    cm = tgraph.compile(model, (x,), backend=backend)
    assert cm.graph.op_histogram()["rotary"] == len(PAIRS)
    for shape in ((2, 8, 32), (3, 5, 32)):
        y = torch.randn(*shape)
        with torch.no_grad():
            want = model(y)
        for got, w in zip(cm(y), want):
            torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-5)


# block -> words of the reason
NEGATIVE = {
    "halves": "is not x[..., 4:8]",
    "uneven": "is not x[..., 4:8]",
    "leak": "is a graph output",
    "pairs-swapped": "is not x[..., 1:8:2]",
    "pairs-stacked": "does not add a last axis",
}
RULE = {"pairs-swapped": "rotate-pairs", "pairs-stacked": "rotate-pairs"}


def test_other_forms_are_rejected_with_a_reason():
    g = _traced(tuple(NEGATIVE))
    out, records = optimize(g, "fuse-rotary")
    assert out.dump() == g.dump()
    got = {
        r["module"].split(".")[1]: r["reason"]
        for rule in ("rotate-half", "rotate-pairs")
        for r in rejections(records, rule)
        if RULE.get(r["module"].split(".")[1], "rotate-half") == rule
    }
    for name, words in NEGATIVE.items():
        assert words in got[name], (name, got)


# -- model cases -------------------------------------------------------------------------------

# q and k in each of 2 layers; Phi and GPT-NeoX rotate the first half of each head only.
ROTARIES = {"llama-tiny": 4, "hf-llama": 4, "hf-phi": 4, "hf-gpt-neox": 4, "gpt-tiny": 0}


@pytest.mark.parametrize("name", sorted(ROTARIES))
def test_model_cases(name, traced_case):
    _, g = traced_case(name)
    want = ROTARIES[name]
    out, records = check_pass(g, "fuse-rotary", changed=want > 0, sizes=((2, 16), (1, 7)))
    assert out.op_histogram().get("rotary", 0) == matches(records, "rotate-half") == want
    if want:
        assert "neg" not in out.op_histogram()
