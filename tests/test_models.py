"""Tests of the model zoo: forward shapes, masking semantics, export, checkpoints, registry."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.export import Dim, export

from tgraph.models import (
    FAMILIES,
    ZOO,
    CheckpointError,
    UnknownModelError,
    build,
    example_inputs,
    list_zoo,
    load_checkpoint,
    save_checkpoint,
)

TINY = [name for name in list_zoo() if name.endswith("-tiny")]
SIZES = [(2, 16), (1, 7)]


def _outputs(out: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return out if isinstance(out, dict) else {"out": out}


def _run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return _outputs(model(**inputs))


def _expected_shapes(name: str, batch: int, seq: int) -> dict[str, tuple[int, ...]]:
    family, cfg = ZOO[name]
    if family == "transformer":
        return {"out": (batch, seq, cfg.d_model)}
    if family == "gpt":
        return {"out": (batch, seq, cfg.vocab_size)}
    if family == "llama":
        return {"out": (batch, seq, cfg.vocab_size)}
    if family == "vit":
        return {"out": (batch, 1 + cfg.num_patches, cfg.hidden_size)}
    return {
        "last_hidden_state": (batch, seq, cfg.hidden_size),
        "pooler_output": (batch, cfg.hidden_size),
    }


def test_zoo_has_every_family_tiny_and_full() -> None:
    assert set(FAMILIES) == {"transformer", "gpt", "bert", "vit", "llama"}
    assert set(TINY) == {f"{family}-tiny" for family in FAMILIES}
    full = {"transformer", "gpt-small", "bert-base", "vit-base", "llama-small"}
    assert set(list_zoo()) == set(TINY) | full
    for family, config in ZOO.values():
        assert isinstance(config, FAMILIES[family][0])


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("batch,seq", SIZES)
def test_tiny_forward_shapes_and_finite(name: str, batch: int, seq: int) -> None:
    model = build(name)
    assert model.family == ZOO[name][0]
    assert model.config == ZOO[name][1]
    assert not model.training
    out = _run(model, example_inputs(model, batch=batch, seq=seq, seed=batch * 100 + seq))
    expected = _expected_shapes(name, batch, seq)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    for value in out.values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("name", TINY)
def test_tiny_runs_at_max_seq(name: str) -> None:
    family, cfg = ZOO[name]
    limit = {
        "transformer": "max_seq",
        "gpt": "block_size",
        "bert": "max_position_embeddings",
        "llama": "max_position_embeddings",
        "vit": None,
    }[family]
    seq = getattr(cfg, limit) if limit else 16
    out = _run(build(name), example_inputs(name, batch=1, seq=seq, seed=3))
    assert all(torch.isfinite(v).all() for v in out.values())


def test_build_is_deterministic_per_seed_and_keeps_global_rng() -> None:
    torch.manual_seed(1234)
    before = torch.rand(1)
    torch.manual_seed(1234)
    a, b, c = build("gpt-tiny", seed=0), build("gpt-tiny", seed=0), build("gpt-tiny", seed=1)
    assert torch.equal(torch.rand(1), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
        assert not torch.equal(sa[key], sc[key]), key


def test_no_parameter_is_left_at_an_identity_value() -> None:
    # Zero biases or unit norm gains would hide a fused kernel that drops them.
    for name in TINY:
        for key, param in build(name).named_parameters():
            assert not torch.all(param == 0), f"{name}: {key} is all zeros"
            assert not torch.all(param == 1), f"{name}: {key} is all ones"


def test_gpt_lm_head_is_tied() -> None:
    model = build("gpt-tiny")
    assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny"])
def test_decoder_is_causal(name: str) -> None:
    model = build(name)
    ids = example_inputs(model, batch=2, seq=12, seed=7)["input_ids"]
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] + 1) % model.config.vocab_size
    before, after = (
        _run(model, {"input_ids": ids})["out"],
        _run(model, {"input_ids": changed})["out"],
    )
    assert torch.equal(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_bert_padding_mask_hides_padded_tokens() -> None:
    model = build("bert-tiny")
    inputs = example_inputs(model, batch=2, seq=12, seed=11)
    mask = inputs["attention_mask"]
    assert mask[0].all() and not mask[1].all()
    pad = (mask[1] == 0).nonzero().flatten()
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][1, pad] = (changed["input_ids"][1, pad] + 1) % model.config.vocab_size
    before, after = _run(model, inputs), _run(model, changed)
    keep = mask[1].bool()
    assert torch.allclose(
        before["last_hidden_state"][1, keep], after["last_hidden_state"][1, keep], atol=1e-6
    )
    assert torch.allclose(before["pooler_output"], after["pooler_output"], atol=1e-6)
    assert torch.equal(before["last_hidden_state"][0], after["last_hidden_state"][0])
    # Without the mask the same change is visible everywhere: the test above is not vacuous.
    unmasked = {k: v for k, v in inputs.items() if k != "attention_mask"}
    changed_unmasked = dict(unmasked, input_ids=changed["input_ids"])
    a = _run(model, unmasked)["last_hidden_state"][1, keep]
    b = _run(model, changed_unmasked)["last_hidden_state"][1, keep]
    assert not torch.allclose(a, b, atol=1e-6)


def test_example_inputs_are_seeded_and_validated() -> None:
    a, b = example_inputs("llama-tiny", seed=4), example_inputs("llama-tiny", seed=4)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], example_inputs("llama-tiny", seed=5)["input_ids"])
    assert example_inputs("vit-tiny", batch=3, seq=999)["pixel_values"].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="seq 65"):
        example_inputs("gpt-tiny", seq=65)
    with pytest.raises(TypeError, match="not a zoo model"):
        example_inputs(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", TINY)
def test_tiny_exports_with_dynamic_batch_and_seq(name: str) -> None:
    model = build(name)
    inputs = example_inputs(model, batch=2, seq=16)
    batch, seq = Dim("batch", min=1, max=8), Dim("seq", min=1, max=64)
    dims = {k: {0: batch} if k == "pixel_values" else {0: batch, 1: seq} for k in inputs}
    program = export(model, (), inputs, dynamic_shapes=dims, strict=False)
    other = example_inputs(model, batch=1, seq=9, seed=2)
    want, got = _run(model, other), _outputs(program.module()(**other))
    for key in want:
        torch.testing.assert_close(got[key], want[key])


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="gpt-tiny") as info:
        build("gpt-tinyy")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    with pytest.raises(UnknownModelError, match="bert-base"):
        example_inputs("bert-bse")


# Checkpoints.


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = build(name, seed=3)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(model, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert not loaded.training
    inputs = example_inputs(model, batch=2, seq=10, seed=8)
    want, got = _run(model, inputs), _run(loaded, inputs)
    for key in want:
        assert torch.equal(want[key], got[key])


def test_checkpoint_payload_is_plain(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(build("llama-tiny"), path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "tgraph-zoo" and payload["version"] == 1
    assert payload["family"] == "llama"
    assert payload["config"] == dataclasses.asdict(ZOO["llama-tiny"][1])
    assert all(isinstance(v, (int, float, bool, str)) for v in payload["config"].values())


def _edit_checkpoint(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Rewrites a saved checkpoint after ``edit`` changed its payload in place."""
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def test_checkpoint_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build("gpt-tiny"), path)
    _edit_checkpoint(path, lambda p: p["state_dict"].pop("h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"model\.pt: key 'h\.1\.mlp\.c_fc\.bias' is missing"):
        load_checkpoint(path)


def test_checkpoint_unexpected_key(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build("bert-tiny"), path)
    _edit_checkpoint(path, lambda p: p["state_dict"].update(extra=torch.randn(3)))
    with pytest.raises(CheckpointError, match="unexpected key 'extra'"):
        load_checkpoint(path)


def test_checkpoint_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build("gpt-tiny"), path)
    # Weights of a wider model under the tiny config.
    wide = dataclasses.replace(ZOO["gpt-tiny"][1], n_embd=64)
    wide_weights = FAMILIES["gpt"][1](wide).state_dict()
    _edit_checkpoint(path, lambda p: p.update(state_dict=wide_weights))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: key 'wte.weight' has shape (100, 64), config wants (100, 32)"
    )
    assert "more" in message and "\n" not in message


def test_checkpoint_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("cut", [0, 0.5, 0.99])
def test_checkpoint_truncated(tmp_path: Path, cut: float) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build("vit-tiny"), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_checkpoint_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    gen = torch.Generator().manual_seed(0)
    path.write_bytes(
        bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist())
    )
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_checkpoint_not_a_zoo_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(build("gpt-tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match="not a tgraph zoo checkpoint"):
        load_checkpoint(path)


def test_checkpoint_unknown_family(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build("gpt-tiny"), path)
    _edit_checkpoint(path, lambda p: p.update(family="mamba"))
    with pytest.raises(CheckpointError, match="unknown model family 'mamba'"):
        load_checkpoint(path)


def test_checkpoint_unknown_config_field(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build("llama-tiny"), path)
    _edit_checkpoint(path, lambda p: p["config"].update(n_experts=8))
    with pytest.raises(CheckpointError, match="config field 'n_experts'"):
        load_checkpoint(path)


class _Malicious:
    """Unpickling this calls open(marker, "w"): harmless, but code all the same."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_refuses_code_in_pickle(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    marker = tmp_path / "pwned"
    save_checkpoint(build("gpt-tiny"), path)
    _edit_checkpoint(path, lambda p: p.update(extra=_Malicious(marker)))
    with pytest.raises(CheckpointError, match="refused to load.*safetensors") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # The payload is live: a full unpickle would have run it.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    torch.load(path, weights_only=False)["extra"].close()
    assert marker.exists()


def test_save_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build("gpt-tiny", seed=0), path)
    good = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(build("gpt-tiny", seed=1), path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
