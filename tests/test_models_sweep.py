"""The sweep's check (tools/hf_sweep_case.py) on a few architectures (model_cases.SWEEP_CASES):
tiny config from the class defaults, export with dynamic batch and sequence, tgraph.compile on
ORT, the same graph lowered to torch and the reference interpreter, every output within 1e-4
of eager at two sizes other than the traced one."""

from __future__ import annotations

import os
import sys

import pytest
from model_cases import SWEEP_CASES

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

from hf_sweep_case import BACKENDS, sweep_one  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(SWEEP_CASES))
def test_sweep_architecture_matches_eager_on_every_backend(model_type):
    record = sweep_one(model_type, SWEEP_CASES[model_type][0])
    assert record["exports"] == "yes", record["failure"]
    assert {b: record[b] for b in BACKENDS} == dict.fromkeys(BACKENDS, "ok"), record["failure"]


def test_multimodal_architectures_are_out_of_scope():
    # text plus images (CLIP) is recorded as out of scope, not run
    record = sweep_one("clip", "CLIPModel")
    assert record["exports"] == "skip" and record["modality"] == "multimodal"


def test_shrink_makes_every_size_field_tiny():
    from hf_sweep_config import shrink

    config = {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "num_key_value_heads": 4, "intermediate_size": 3072, "vocab_size": 32000,
        "eos_token_id": 50256, "pad_token_id": 0, "layer_types": ["full", "sliding"] * 6,
        "mlp_bias_per_layer": [True] * 12, "depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320],
        "text_config": {"model_type": "x", "d_model": 1024, "encoder_layers": 6},
        "use_cache": True, "rope_theta": 1e6,
    }  # fmt: skip
    small = shrink(config)
    assert (small["hidden_size"], small["num_hidden_layers"], small["num_attention_heads"]) == (
        32, 2, 4,
    )  # fmt: skip
    assert small["num_key_value_heads"] == 2  # grouped-query attention stays grouped
    assert (small["intermediate_size"], small["vocab_size"]) == (64, 100)
    assert small["eos_token_id"] < 100 and small["pad_token_id"] == 0
    assert small["layer_types"] == ["full", "sliding"] and small["mlp_bias_per_layer"] == [True] * 2
    assert small["depths"] == [1, 1, 1, 1] and small["hidden_sizes"] == [16, 32, 64]
    assert small["text_config"] == {"model_type": "x", "d_model": 32, "encoder_layers": 2}
    assert small["use_cache"] is True and small["rope_theta"] == 1e6
