"""fuse-skip-layernorm: residual add + LayerNorm/RMSNorm -> skip_layer_norm / skip_rms_norm.

These also cover the rewrite engine's ``exports``: the add's other users move to the fused
node's second output, and an add read before the norm is rejected.
"""

import pytest
import torch
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.passes.manager import optimize

C = 16


def _unchanged(graph, pipeline="fuse-skip-layernorm"):
    out, records = optimize(graph, pipeline)
    assert out.dump() == graph.dump()
    return records


class Block(torch.nn.Module):
    """s = x + f(x); y = norm(s); returns y, and s + y when ``pre_norm`` (s is read again)."""

    def __init__(self, norm="layer", pre_norm=False, **ln_kwargs):
        super().__init__()
        self.f = torch.nn.Linear(C, C)
        self.norm = torch.nn.LayerNorm(C, **ln_kwargs) if norm == "layer" else None
        self.w = torch.nn.Parameter(torch.randn(C))
        self.pre_norm = pre_norm

    def _norm(self, s):
        if self.norm is not None:
            return self.norm(s)
        return self.w * (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6))

    def forward(self, x):
        s = x + self.f(x)
        y = self._norm(s)
        return s + self.f(y) if self.pre_norm else y


@pytest.mark.parametrize(
    "ln_kwargs, n_params",
    [({}, 2), ({"bias": False}, 1), ({"elementwise_affine": False}, 0)],
)
def test_post_norm_add_and_layer_norm_fuse(ln_kwargs, n_params):
    g = trace_module(Block(**ln_kwargs), torch.randn(2, 5, C))
    out, records = check_pass(
        g, "fuse-skip-layernorm", appear=["skip_layer_norm"], disappear=["layer_norm"]
    )
    assert matches(records, "skip-layer-norm") == 1
    (node,) = [n for n in out.nodes if n.op == "skip_layer_norm"]
    assert len(node.inputs) == 2 + n_params and not node.outputs[1].uses()
    assert node.outputs[0] is out.outputs[0]


def test_pre_norm_residual_reads_the_sum_output():
    g = trace_module(Block(pre_norm=True), torch.randn(2, 5, C))
    add = next(n for n in g.nodes if n.op == "add")
    out, records = check_pass(g, "fuse-skip-layernorm", appear=["skip_layer_norm"])
    (node,) = [n for n in out.nodes if n.op == "skip_layer_norm"]
    normed, total = node.outputs
    assert total.name == add.name  # the sum keeps the add's name: a small diff
    assert [u.op for u, _ in total.uses()] == ["add"] and normed.uses()
    assert out.op_histogram()["add"] == 1


def test_sum_that_is_a_graph_output_is_taken_over():
    class Both(Block):
        def forward(self, x):
            s = x + self.f(x)
            return self.norm(s), s

    g = trace_module(Both(), torch.randn(2, 5, C))
    out, _ = check_pass(g, "fuse-skip-layernorm", disappear=["add", "layer_norm"])
    (fused,) = [n for n in out.nodes if n.op == "skip_layer_norm"]
    assert list(out.outputs) == fused.outputs


def test_rms_norm_after_fuse_layernorm():
    g = trace_module(Block(norm="rms", pre_norm=True), torch.randn(2, 5, C))
    out, records = check_pass(
        g, "fuse-layernorm,fuse-skip-layernorm", appear=["skip_rms_norm"], disappear=["rms_norm"]
    )
    assert matches(records, "skip-rms-norm") == 1


class Flattened(Block):
    """OPT's decoder layer: the residual sum flattened to (B*T, C) before the norm, and the
    flat sum read again after it as the next residual."""

    def __init__(self, heads: int = 1):
        super().__init__()
        self.norm = torch.nn.LayerNorm(C // heads)
        self.heads = heads

    def forward(self, x):
        s = x + self.f(x)
        flat = s.reshape(-1, self.heads, C // self.heads) if self.heads > 1 else s.reshape(-1, C)
        return flat + self.norm(flat)


def test_reshape_between_add_and_norm_moves_after_the_fused_op():
    g = trace_module(Flattened(), torch.randn(2, 5, C))
    out, records = check_pass(
        g, "fuse-skip-layernorm", appear=["skip_layer_norm"], disappear=["layer_norm"]
    )
    assert matches(records, "skip-layer-norm-reshaped") == 1
    (node,) = [n for n in out.nodes if n.op == "skip_layer_norm"]
    assert [u.op for v in node.outputs for u, _ in v.uses()] == ["reshape", "reshape"]


# -- where the rules must not fire -------------------------------------------------------------


def test_reshape_that_splits_the_normalized_dim_is_rejected():
    g = trace_module(Flattened(heads=2), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g), "skip-layer-norm-reshaped")
    assert "moves the last dim" in r["reason"]


def test_broadcasting_residual_is_rejected():
    class Positional(Block):
        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Parameter(torch.randn(1, 1, C))

        def forward(self, x):
            return self.norm(self.f(x) + self.pos)

    g = trace_module(Positional(), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g), "skip-layer-norm")
    assert "%pos [1,1,16] broadcasts to [batch,seq,16]" in r["reason"]


def test_sum_read_before_the_norm_is_rejected():
    class Early(Block):
        def forward(self, x):
            s = x + self.f(x)
            z = s * 2.0  # placed between the add and the norm
            return self.norm(s) + z

    g = trace_module(Early(), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g), "skip-layer-norm")
    assert "before the match root" in r["reason"]


def test_rms_norm_of_a_broadcasting_add_is_rejected():
    class Positional(Block):
        def __init__(self):
            super().__init__(norm="rms")
            self.pos = torch.nn.Parameter(torch.randn(C))

        def forward(self, x):
            return self._norm(self.f(x) + self.pos)

    g = trace_module(Positional(), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-layernorm,fuse-skip-layernorm", appear=["rms_norm"])
    (r,) = rejections(records, "skip-rms-norm")
    assert "broadcasts to" in r["reason"]


# -- model cases -------------------------------------------------------------------------------

MODEL_MATCHES = {  # pipeline, matches per rule
    "gpt-tiny": ("fuse-skip-layernorm", {"skip-layer-norm": 4}),
    "llama-tiny": ("fuse-layernorm,fuse-skip-layernorm", {"skip-rms-norm": 4}),
    "hf-gpt2": ("fuse-skip-layernorm", {"skip-layer-norm": 4}),
    "hf-llama": ("simplify,dce,fuse-layernorm,fuse-skip-layernorm", {"skip-rms-norm": 4}),
    "hf-bert": ("fuse-skip-layernorm", {"skip-layer-norm": 4}),
    # the embedding sum too (same shape); the other 4 norms read a (B*T, C) reshape of the sum
    "hf-opt": ("fuse-skip-layernorm", {"skip-layer-norm": 1, "skip-layer-norm-reshaped": 4}),
}
NORMS_LEFT = {"hf-opt": 0}


@pytest.mark.parametrize("name", sorted(MODEL_MATCHES))
def test_model_cases(traced_case, name):
    _, g = traced_case(name)
    pipeline, want = MODEL_MATCHES[name]
    out, records = check_pass(g, pipeline)
    for rule in ("skip-layer-norm", "skip-rms-norm", "skip-layer-norm-reshaped"):
        assert matches(records, rule) == want.get(rule, 0), rule
    hist = out.op_histogram()
    # The embedding sum broadcasts or reaches the first norm through a copy: it stays.
    assert hist.get("layer_norm", 0) + hist.get("rms_norm", 0) == NORMS_LEFT.get(name, 1)
