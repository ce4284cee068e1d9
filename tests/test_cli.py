"""The tgraph command line: verbs, checkpoints, and one-line errors that lose nothing."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tgraph.models import build, save_checkpoint


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def tgraph(*args):
    """Run the CLI in this process (fast); returns returncode, stdout and stderr."""
    from click.testing import CliRunner

    from tgraph.cli import main

    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return _Result(result.exit_code, result.stdout, result.stderr)


def tgraph_process(*args):
    """Run the CLI in a fresh subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "tgraph", *args], capture_output=True, text=True)


def assert_one_line_error(proc, fragment, code=1):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    import transformers as T

    torch.manual_seed(0)
    model = T.BertModel(
        T.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).eval()
    path = tmp_path_factory.mktemp("hf") / "bert"
    model.save_pretrained(path)
    return path, model


def test_hf_directory_compiles_runs_and_matches_eager(hf_dir, tmp_path):
    path, model = hf_dir
    out = tmp_path / "bert.tg"
    proc = tgraph_process("compile", str(path), "-o", str(out), "--backend", "reference")
    assert proc.returncode == 0, proc.stderr
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 100, size=(3, 9)).astype(np.int64)
    mask = np.ones((3, 9), dtype=np.int64)
    mask[2, 6:] = 0
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=mask)
    proc = tgraph(
        "run", str(out), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")
    )
    assert proc.returncode == 0, proc.stderr
    assert "last_hidden_state: float32[3, 9, 32]" in proc.stdout
    got = np.load(tmp_path / "o.npz")
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    np.testing.assert_allclose(got["last_hidden_state"], want.last_hidden_state.numpy(), atol=1e-4)


def test_compile_dump_diff_passes_session(tmp_path):
    dumps = tmp_path / "dumps"
    proc = tgraph(
        "compile", "zoo:gpt-tiny", "-o", str(tmp_path / "g.tg"), "--backend", "reference",
        "--pipeline", "dce", "--dump-dir", str(dumps),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (dumps / "summary.json").exists() and (dumps / "01-dce.txt").exists()
    proc = tgraph("diff", str(dumps / "00-input.txt"), str(dumps / "01-dce.txt"))
    assert proc.returncode == 0
    proc = tgraph("run", str(tmp_path / "g.tg"), "--random", "--batch", "2", "--seq-len", "5")
    assert proc.returncode == 0 and "output: float32[2, 5, 100]" in proc.stdout
    proc = tgraph("passes")
    assert proc.returncode == 0 and "dce" in proc.stdout
    proc = tgraph("dump", "zoo:gpt-tiny", "--format", "dot")
    assert proc.returncode == 0 and proc.stdout.startswith('digraph "GPT"')


def test_every_verb_has_help_with_examples():
    for verb in ["compile", "run", "dump", "diff", "passes"]:
        proc = tgraph(verb, "--help")
        assert proc.returncode == 0 and "Example" in proc.stdout, verb


def test_bad_checkpoints_fail_with_one_line(tmp_path):
    assert_one_line_error(tgraph("dump", str(tmp_path / "nope.pt")), "no such file")
    assert_one_line_error(tgraph("dump", "zoo:gpt-tinny"), "gpt-tiny")
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{oops")
    (bad_json / "model.safetensors").write_bytes(b"")
    assert_one_line_error(tgraph("dump", str(bad_json)), "not valid JSON")
    for suffix in (".pt", ".pt2"):
        f = tmp_path / f"garbage{suffix}"
        f.write_bytes(os.urandom(256))
        assert_one_line_error(tgraph("dump", str(f)), str(f))
    ckpt = tmp_path / "gpt.pt"
    save_checkpoint(build("gpt-tiny"), ckpt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    assert_one_line_error(tgraph("dump", str(truncated)), "truncated.pt")


def test_truncated_safetensors_and_corrupt_bin(hf_dir, tmp_path):
    path, _ = hf_dir
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(tgraph("dump", str(cut)), "truncated safetensors")
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((path / "config.json").read_text())
    (binary / "pytorch_model.bin").write_bytes(os.urandom(1000))
    assert_one_line_error(tgraph("dump", str(binary)), "pytorch_model.bin")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(hf_dir, tmp_path):
    path, _ = hf_dir
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((path / "config.json").read_text())
    torch.save({"weight": _Payload(str(marker))}, evil / "pytorch_model.bin", pickle_protocol=2)
    proc = tgraph_process("dump", str(evil))
    assert_one_line_error(proc, "refused")
    assert "safetensors" in proc.stderr
    assert not marker.exists()
    zoo_evil = tmp_path / "evil.pt"
    with open(zoo_evil, "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    assert_one_line_error(tgraph("dump", str(zoo_evil)), "evil.pt")
    assert not marker.exists()


def test_unknown_pass_lists_close_matches():
    proc = tgraph("dump", "zoo:gpt-tiny", "--pipeline", "dce,simplfy")
    assert_one_line_error(proc, "did you mean simplify")


def test_bad_run_inputs(tmp_path):
    art = tmp_path / "g.tg"
    assert (
        tgraph("compile", "zoo:gpt-tiny", "-o", str(art), "--backend", "reference").returncode == 0
    )
    cases = {
        "missing": ({"tokens": np.zeros((1, 3), np.int64)}, "missing input 'input_ids'"),
        "rank": ({"input_ids": np.arange(3, dtype=np.int64)}, "has rank 1"),
        "dtype": ({"input_ids": np.ones((1, 3), np.float32)}, "has dtype float32"),
    }
    for name, (arrays, fragment) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        assert_one_line_error(
            tgraph("run", str(art), "--inputs", str(tmp_path / f"{name}.npz")), fragment
        )
    assert_one_line_error(tgraph("run", str(tmp_path), "--random"), "not a tgraph artifact")
    proc = tgraph("run", str(art), "--random", "--inputs", str(tmp_path / "missing.npz"))
    assert_one_line_error(proc, "not both", code=2)


def test_failed_compile_keeps_the_previous_artifact(tmp_path):
    art = tmp_path / "g.tg"
    assert (
        tgraph("compile", "zoo:gpt-tiny", "-o", str(art), "--backend", "reference").returncode == 0
    )
    before = sorted((p.name, p.read_bytes()) for p in art.iterdir())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert tgraph("compile", str(bad), "-o", str(art)).returncode == 1
    assert tgraph("compile", "zoo:gpt-tiny", "-o", str(art), "--pipeline", "nope").returncode == 1
    assert sorted((p.name, p.read_bytes()) for p in art.iterdir()) == before
    assert tgraph("run", str(art), "--random").returncode == 0


def test_debug_shows_the_traceback(tmp_path):
    proc = tgraph_process("--debug", "dump", str(tmp_path / "nope.pt"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_error_line_keeps_the_message_whole():
    from tgraph.cli.app import error_line

    e = AttributeError("'ExportedProgram' object has no attribute 'training'")
    assert error_line(e) == "'ExportedProgram' object has no attribute 'training'"
    assert error_line(KeyError("missing input 'x'")) == "missing input 'x'"
    assert error_line(ValueError("first\nsecond")) == "first"
    assert error_line(RuntimeError()) == "RuntimeError"


def test_every_command_fails_with_one_line_and_debug_shows_the_traceback():
    from tgraph.cli import main

    for args in (["dump", "zoo:nope"], ["bench", "zoo:nope"], ["bisect", "zoo:nope"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.count("\n") == 1 and "unknown model 'nope'" in result.stderr
    debug = CliRunner().invoke(main, ["--debug", "dump", "zoo:nope"])
    assert debug.exit_code == 1 and debug.exception is not None
