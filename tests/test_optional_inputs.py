"""Optional model inputs stay optional: omitted ones get the model's own default."""

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error
from test_cli import tgraph as cli

import tgraph


def _bert():
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return T.BertModel(config).eval()


def _example(batch, seq, position_ids=None):
    """Example inputs; position ids 0..seq-1 unless given (what a tokenizer's batch means)."""
    return {
        "input_ids": torch.randint(0, 100, (batch, seq)),
        "attention_mask": torch.randint(0, 2, (batch, seq)),
        "token_type_ids": torch.randint(0, 2, (batch, seq)),
        "position_ids": torch.arange(seq)[None] if position_ids is None else position_ids,
    }


def test_a_fill_is_recorded_only_where_eager_agrees():
    """transformers 5 reads position ids that restart or jump as packed sequences when no
    mask is given (a block-diagonal mask), so with such example position ids omitting the
    mask is not the same as all ones: the mask is then required, never filled wrongly."""
    model = _bert()
    example = _example(2, 16, torch.randint(0, 64, (1, 16)))
    rest = {k: v for k, v in example.items() if k != "attention_mask"}
    with torch.no_grad():
        omitted = model(**rest).last_hidden_state
        ones = model(**rest, attention_mask=torch.ones(2, 16, dtype=torch.int64))
    eager_fills_ones = torch.allclose(ones.last_hidden_state, omitted, atol=1e-5)
    cm = tgraph.compile(model, example, backend="ort")
    fills = {n: d["fill"] for n, d in cm.graph.meta["input_defaults"].items()}
    assert ("attention_mask" in fills) == eager_fills_ones
    if not eager_fills_ones:
        with pytest.raises(tgraph.api.InputError, match="inputs missing \\['attention_mask'\\]"):
            cm(input_ids=example["input_ids"])


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_omitted_optional_inputs_get_the_models_defaults(backend):
    model = _bert()
    cm = tgraph.compile(model, _example(2, 16), backend=backend)
    fills = {n: d["fill"] for n, d in cm.graph.meta["input_defaults"].items()}
    assert fills == {
        "attention_mask": "ones", "token_type_ids": "zeros", "position_ids": "range"
    }  # fmt: skip
    ids = torch.randint(0, 100, (3, 9))  # another batch and length than traced
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
        assert torch.allclose(cm(input_ids=ids).last_hidden_state, want, atol=1e-4)
        assert torch.allclose(cm(ids).last_hidden_state, want, atol=1e-4)
        # a given input is used, the rest filled
        mask = torch.randint(0, 2, (3, 9))
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = cm(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(got, want, atol=1e-4)


def test_defaults_survive_save_and_load(tmp_path):
    model = _bert()
    tgraph.compile(model, _example(2, 16), backend="ort").save(tmp_path / "m.tg")
    cm = tgraph.load(tmp_path / "m.tg")
    ids = torch.randint(0, 100, (1, 5))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    assert torch.allclose(cm(input_ids=ids).last_hidden_state, want, atol=1e-4)


class _Scaled(torch.nn.Module):
    """``scale=None`` means 3: no fill reproduces it, so the input stays required."""

    def forward(self, x, scale=None):
        return x * (3.0 if scale is None else scale)


def test_an_optional_input_no_fill_reproduces_stays_required():
    x = torch.randn(2, 4, 8)
    cm = tgraph.compile(_Scaled(), {"x": x, "scale": torch.randn(2, 4, 8)}, backend="reference")
    assert "scale" not in cm.graph.meta["input_defaults"]
    with pytest.raises(tgraph.InputError, match="missing \\['scale'\\]"):
        cm(x=x)


def test_cli_run_fills_inputs_missing_from_the_npz(tmp_path):
    model = _bert()
    model.save_pretrained(tmp_path / "bert")
    assert cli("compile", str(tmp_path / "bert"), "-o", str(tmp_path / "b.tg")).returncode == 0
    ids = np.random.default_rng(0).integers(0, 100, (3, 7))
    np.savez(tmp_path / "x.npz", input_ids=ids)
    proc = cli("run", str(tmp_path / "b.tg"), "--inputs", str(tmp_path / "x.npz"),
               "--output", str(tmp_path / "o.npz"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "attention_mask: not in" in proc.stderr and "(ones)" in proc.stderr
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    got = np.load(tmp_path / "o.npz")["last_hidden_state"]
    np.testing.assert_allclose(got, want, atol=1e-4)
    # an input with no default is still named when missing
    np.savez(tmp_path / "y.npz", attention_mask=np.ones((3, 7), dtype=np.int64))
    proc = cli("run", str(tmp_path / "b.tg"), "--inputs", str(tmp_path / "y.npz"))
    assert_one_line_error(proc, "missing input 'input_ids'")
