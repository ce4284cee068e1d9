"""fuse-linear: matmul by a constant weight, bias adds and GPT-2 Conv1D reshapes -> linear."""

import pytest
import torch
from pass_helpers import check_pass, matches, rejections, trace_module

from tgraph.passes.manager import optimize

C, N = 8, 16


def _unchanged(graph, pipeline="fuse-linear"):
    out, records = optimize(graph, pipeline)
    assert out.dump() == graph.dump()
    return records


class MatmulAdd(torch.nn.Module):
    """x @ W + b, the bias on either side; W of shape (C, N) as Conv1D stores it."""

    def __init__(self, bias_first=False, bias_shape=(N,)):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(C, N))
        self.b = torch.nn.Parameter(torch.randn(bias_shape))
        self.bias_first = bias_first

    def forward(self, x):
        y = x @ self.w
        return self.b + y if self.bias_first else y + self.b


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_becomes_linear_with_a_transposed_weight(bias_first):
    g = trace_module(MatmulAdd(bias_first), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear", appear=["linear"], disappear=["matmul", "add"])
    assert matches(records, "matmul") == 1 and matches(records, "linear-bias") == 1
    (node,) = out.nodes
    w, b = node.inputs[1], node.inputs[2]
    assert w.name == "w.T" and tuple(w.shape) == (N, C) and b.name == "b"
    assert node.meta["rule"] == "linear-bias"


def test_matmul_alone_and_a_shared_weight_reuse_one_transposed_constant():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(C, C))

        def forward(self, x):
            return (x @ self.w) @ self.w

    g = trace_module(Two(), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear,dce", disappear=["matmul"])
    assert matches(records, "matmul") == 2
    assert sorted(out.initializers) == ["w.T"]


def test_matmul_by_a_permuted_weight_uses_the_weight_as_is():
    class Permuted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(N, C))

        def forward(self, x):
            return x @ self.w.t()

    g = trace_module(Permuted(), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear", appear=["linear"], disappear=["permute", "matmul"])
    assert matches(records, "matmul-permuted-weight") == 1
    (node,) = out.nodes
    assert node.inputs[1].name == "w"


class Conv1D(torch.nn.Module):
    """Hugging Face GPT-2's Conv1D: addmm on the flattened rows, then the rows split back."""

    def __init__(self, split_feature=False, out_shape=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(C // 2 if split_feature else C, N))
        self.b = torch.nn.Parameter(torch.randn(N))
        self.split_feature, self.out_shape = split_feature, out_shape

    def forward(self, x):
        flat = x.reshape(-1, C // 2) if self.split_feature else x.view(-1, x.size(-1))
        y = torch.addmm(self.b, flat, self.w)
        if self.out_shape == "merged":
            return y.view(x.size(0), -1)
        return y.view(x.size(0), -1, N)


def test_conv1d_chain_becomes_one_linear_on_the_unflattened_input():
    g = trace_module(Conv1D(), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear", disappear=["matmul", "add", "reshape"])
    assert matches(records, "flatten-linear") == 1
    (node,) = out.nodes
    assert node.op == "linear" and node.inputs[0] is out.inputs[0]
    assert out.outputs[0].shape == g.outputs[0].shape


def test_conv1d_chain_on_rows_regrouped_another_way_keeps_one_reshape():
    g = trace_module(Conv1D(split_feature=True), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear", disappear=["matmul", "add"])
    assert matches(records, "flatten-linear") == 1
    reshape, linear = out.nodes
    assert (reshape.op, linear.op) == ("reshape", "linear")
    assert str(reshape.output.type) == "f32[batch,2*seq,4]"


def test_linear_without_bias_then_bias_add_folds():
    class LinAdd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(N, C))
            self.b = torch.nn.Parameter(torch.randn(N))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.w) + self.b

    g = trace_module(LinAdd(), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear", disappear=["add"])
    (node,) = out.nodes
    assert matches(records, "linear-bias") == 1 and len(node.inputs) == 3


# -- where the rules must not fire -------------------------------------------------------------


def test_matmul_by_a_rank_3_constant_is_rejected():
    class Batched(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(2, C, N))

        def forward(self, x):
            return x @ self.w

    g = trace_module(Batched(), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g), "matmul")
    assert "rank 3, want 2" in r["reason"]


def test_permuted_weight_with_another_user_is_left_alone():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(N, C))

        def forward(self, x):
            wt = self.w.t()
            return x @ wt, wt * 2.0

    g = trace_module(Shared(), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g), "matmul-permuted-weight")
    assert "also used by" in r["reason"]


def test_keep_trainable_leaves_a_trainable_weight_alone():
    g = trace_module(MatmulAdd(), torch.randn(2, 5, C))
    (r,) = rejections(_unchanged(g, "fuse-linear{keep_trainable=true}"), "matmul")
    assert "@w is a trainable parameter" in r["reason"]


def test_bias_of_rank_2_is_not_folded():
    g = trace_module(MatmulAdd(bias_shape=(1, N)), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear", appear=["linear", "add"])
    assert matches(records, "linear-bias") == 0
    (r,) = rejections(records, "linear-bias")
    assert "want rank 1" in r["reason"]


def test_bias_add_on_a_matmul_with_another_user_is_not_folded():
    class TwoUsers(MatmulAdd):
        def forward(self, x):
            y = x @ self.w
            return y + self.b, y * 2.0

    g = trace_module(TwoUsers(), torch.randn(2, 5, C))
    out, records = check_pass(g, "fuse-linear", appear=["linear", "add"])
    (r,) = rejections(records, "linear-bias")
    assert "also used by" in r["reason"]


def test_conv1d_chain_that_regroups_features_keeps_its_reshapes():
    g = trace_module(Conv1D(out_shape="merged"), torch.randn(2, 6, C))
    out, records = check_pass(g, "fuse-linear", appear=["linear", "reshape"])
    assert matches(records, "flatten-linear") == 0
    (r,) = rejections(records, "flatten-linear")
    assert "reshape to [batch,16*seq] regroups the 16 output features" in r["reason"]


# -- model cases -------------------------------------------------------------------------------

# Cases where the pass fires, and one where every matmul is attention (it must not).
MODEL_MATCHES = {
    "llama-tiny": {},
    "hf-gpt2": {"matmul": 8, "linear-bias": 8, "flatten-linear": 8},
}


@pytest.mark.parametrize("name", sorted(MODEL_MATCHES))
def test_model_cases(traced_case, name):
    _, g = traced_case(name)
    want = MODEL_MATCHES[name]
    out, records = check_pass(g, "fuse-linear", changed=bool(want))
    for rule in ("matmul-permuted-weight", "matmul", "linear-bias", "flatten-linear"):
        assert matches(records, rule) == want.get(rule, 0), rule
    if want:
        assert "matmul" not in out.op_histogram()
