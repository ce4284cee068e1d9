"""``tgraph generate``: from a Hugging Face directory and from a compiled artifact, and one
line (exit 1) for each kind of bad input."""

from __future__ import annotations

import pytest
import torch
from test_cli import assert_one_line_error, tgraph


def _tokenizer(directory: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(100)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(directory)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    import transformers as T

    root = tmp_path_factory.mktemp("gen-cli")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    llama = T.LlamaForCausalLM(
        T.LlamaConfig(vocab_size=100, num_key_value_heads=2, max_position_embeddings=64, **small)
    ).eval()
    llama.save_pretrained(root / "llama")
    llama.save_pretrained(root / "llama-no-tok")
    _tokenizer(str(root / "llama"))
    T.BertModel(T.BertConfig(vocab_size=100, max_position_embeddings=64, **small)).save_pretrained(
        root / "bert"
    )
    art = root / "llama.tg"
    proc = tgraph("compile", str(root / "llama"), "-o", str(art), "--backend", "torch")
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "llama": llama, "art": str(art)}


def test_generate_text_from_directory_matches_eager(dirs):
    proc = tgraph("generate", str(dirs["root"] / "llama"), "--prompt", "w5 w7 w9",
                  "--max-new-tokens", "6", "--backend", "torch")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text, timing = proc.stdout.strip().splitlines()[-2:]
    want = dirs["llama"].generate(torch.tensor([[5, 7, 9]]), max_new_tokens=6, do_sample=False,
                                  pad_token_id=0)[0, 3:]  # fmt: skip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(dirs["root"] / "llama"), local_files_only=True)
    assert text == tok.decode(want, skip_special_tokens=True)
    assert "prefill" in timing and "tok/s" in timing


def test_generate_ids_from_artifact(dirs):
    proc = tgraph("generate", dirs["art"], "--prompt-ids", "5,7,9", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.strip().splitlines()[0].split()
    want = dirs["llama"].generate(torch.tensor([[5, 7, 9]]), max_new_tokens=6, do_sample=False,
                                  pad_token_id=0)[0, 3:]  # fmt: skip
    assert [int(i) for i in ids] == want.tolist()[: len(ids)]
    assert "backend torch" in proc.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--prompt-ids", "5,7", "--max-new-tokens", "70"], "exceeds the model's maximum length"),
        (["--prompt-ids", "5,7", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (["--prompt-ids", "5,700"], "outside the vocabulary"),
        (["--prompt-ids", "5,x"], "want comma-separated integers"),
    ],
)
def test_bad_generate_input_is_one_line(dirs, args, fragment):
    assert_one_line_error(tgraph("generate", dirs["art"], *args), fragment)


def test_artifact_keeps_the_tokenizer(dirs):
    proc = tgraph("generate", dirs["art"], "--prompt", "w5 w7 w9", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    direct = tgraph("generate", str(dirs["root"] / "llama"), "--prompt", "w5 w7 w9",
                    "--max-new-tokens", "6", "--backend", "torch")  # fmt: skip
    assert proc.stdout.splitlines()[0] == direct.stdout.splitlines()[0]


def test_no_tokenizer_in_directory_is_one_line(dirs):
    proc = tgraph("generate", str(dirs["root"] / "llama-no-tok"), "--prompt", "w1")
    assert_one_line_error(proc, "no tokenizer")


def test_not_a_causal_lm_is_one_line(dirs):
    proc = tgraph("generate", str(dirs["root"] / "bert"), "--prompt-ids", "1,2")
    assert_one_line_error(proc, "BertModel is not a causal LM")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["--backend", "ort"],
            "compiled with --backend torch; --backend ort applies to a checkpoint",
        ),
        (["--pipeline", "int4"], "compiled with --pipeline default; --pipeline int4 applies"),
    ],
)
def test_artifact_refuses_another_backend_or_pipeline(dirs, args, fragment):
    proc = tgraph("generate", dirs["art"], "--prompt-ids", "5,7", *args)
    assert_one_line_error(proc, fragment)


def test_artifact_takes_its_own_backend_and_pipeline_by_name(dirs):
    proc = tgraph("generate", dirs["art"], "--prompt-ids", "5,7", "--max-new-tokens", "2",
                  "--backend", "torch", "--pipeline", "default")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
