"""tools/gen_host_overhead.py on a tiny Llama: both loops run, give the same tokens, and
the report holds one row per round and loop."""

from __future__ import annotations

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import gen_host_overhead  # noqa: E402


def test_tool_times_both_loops(tmp_path, monkeypatch, capsys):
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64)  # fmt: skip
    T.LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    out = tmp_path / "rows.json"
    argv = ["gen_host_overhead", str(tmp_path / "lm"), "--rounds", "2", "--prompt-len", "5",
            "--new-tokens", "4", "--threads", "1", "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    gen_host_overhead.main()
    rows = json.loads(out.read_text())["rows"]
    for name in ("bound", "host-argmax", "generic"):
        assert all(len(rows[name][k]) == 2 for k in ("run_us", "gap_us", "tok_s"))
        assert all(v > 0 for k in ("run_us", "gap_us", "tok_s") for v in rows[name][k])
    assert "bound" in capsys.readouterr().out
