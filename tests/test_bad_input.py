"""Real checkpoints and bad input: one clear line naming the file, tensor or input."""

import shutil

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, tgraph

import tgraph as tg


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("hf") / "bert"
    T.BertModel(config).eval().save_pretrained(path)
    return path


def _edited_copy(src, dst, edit):
    import safetensors.torch as st

    shutil.copytree(src, dst)
    weights = st.load_file(dst / "model.safetensors")
    st.save_file(edit(weights), dst / "model.safetensors")
    return dst


def _assert_refused(tmp_path, checkpoint, fragment):
    out = tmp_path / "out.tg"
    assert_one_line_error(tgraph("compile", str(checkpoint), "-o", str(out)), fragment)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tgraph-")]


def test_missing_weights_are_refused_naming_them(bert_dir, tmp_path):
    dropped = []

    def drop_half(w):
        dropped.extend(sorted(w)[::2])
        return {k: v for k, v in w.items() if k not in dropped}

    half = _edited_copy(bert_dir, tmp_path / "half", drop_half)
    first = ", ".join(dropped[:3])
    _assert_refused(
        tmp_path, half, f"model.safetensors: {len(dropped)} tensors the model needs are "
        f"missing: {first} and {len(dropped) - 3} more",
    )  # fmt: skip


def test_mis_shaped_weights_name_the_tensor_and_both_shapes(bert_dir, tmp_path):
    def shrink(w):
        return {**w, "embeddings.word_embeddings.weight": torch.zeros(50, 32)}

    bad = _edited_copy(bert_dir, tmp_path / "bad", shrink)
    _assert_refused(
        tmp_path, bad,
        "tensor embeddings.word_embeddings.weight has shape [50, 32], config.json needs "
        "[1000, 32]",
    )  # fmt: skip


@pytest.fixture(scope="module")
def bert_art(bert_dir, tmp_path_factory):
    art = tmp_path_factory.mktemp("art") / "b.tg"
    assert tgraph("compile", str(bert_dir), "-o", str(art)).returncode == 0
    return art


@pytest.mark.parametrize(
    "ids, fragment",
    [
        ([[5, -1, 7]], "input_ids: value -1 outside [0, 1000)"),
        ([[5, 1000]], "input_ids: value 1000 outside [0, 1000)"),
        ([list(range(80))], "sequence length 80 exceeds the model's maximum 64 "
         "(max_position_embeddings)"),
    ],
)  # fmt: skip
def test_bad_ids_are_refused_at_the_call(bert_art, tmp_path, ids, fragment):
    np.savez(tmp_path / "x.npz", input_ids=np.array(ids, dtype=np.int64))
    out = tmp_path / "o.npz"
    proc = tgraph("run", str(bert_art), "--inputs", str(tmp_path / "x.npz"), "--output", str(out))
    assert_one_line_error(proc, fragment)
    assert not out.exists()


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_python_calls_check_ids_on_every_backend(backend):
    from tgraph.models import build, example_inputs

    model = build("bert-tiny")
    cm = tg.compile(model, example_inputs(model, batch=2, seq=8), backend=backend)
    good = example_inputs(model, batch=1, seq=5)
    cm(**good)
    with pytest.raises(tg.InputError, match=r"input_ids: value -3 outside \[0, \d+\)"):
        cm(**{**good, "input_ids": torch.tensor([[1, -3, 2, 0, 4]])})
    with pytest.raises(tg.InputError, match=r"token_type_ids: value 2 outside \[0, 2\)"):
        cm(**{**good, "token_type_ids": torch.full_like(good["input_ids"], 2)})
