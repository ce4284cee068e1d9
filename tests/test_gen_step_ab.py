"""tools/gen_step_ab.py on a tiny Llama: two tgraph sessions in one process are timed in
every round, and bad --sessions are one-line errors."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import gen_step_ab  # noqa: E402


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64)  # fmt: skip
    path = tmp_path_factory.mktemp("ab") / "lm"
    T.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def test_two_tgraph_sessions_are_timed_each_round(lm_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ab.json"
    argv = ["gen_step_ab", lm_dir, "--sessions", "tgraph,tgraph", "--past", "8", "--rounds",
            "3", "--steps", "2", "--threads", "1", "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    gen_step_ab.main()
    times = json.loads(out.read_text())["ms_per_step"]
    assert list(times) == ["1:tgraph", "2:tgraph"]
    assert all(len(t) == 3 and min(t) > 0 for t in times.values())
    assert "vs first" in capsys.readouterr().out


def test_the_bound_step_writes_the_logits_of_its_token(lm_dir):
    step, (gen, inputs, caches, logits) = gen_step_ab.tgraph_step(
        lm_dir, past=0, pipeline="default"
    )
    step()
    expected = gen.generate(torch.tensor([[5]]), max_new_tokens=1, eos_token_id=[])[0, 1]
    assert int(logits[0, 0].argmax()) == int(expected)


@pytest.mark.parametrize(
    "argv, message",
    [(["--sessions", "tgraph,vllm"], "takes tgraph and ort-genai"),
     (["--sessions", "ort-genai"], "needs --ort-genai DIR")],
)  # fmt: skip
def test_bad_sessions_are_one_line_errors(lm_dir, monkeypatch, argv, message):
    monkeypatch.setattr(sys, "argv", ["gen_step_ab", lm_dir, *argv])
    with pytest.raises(SystemExit, match=message):
        gen_step_ab.main()
