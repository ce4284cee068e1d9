"""The CLI does what shared/ARCHITECTURE.md shows: optional flags stay optional."""

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, tgraph


def test_run_without_inputs_uses_random_inputs_of_the_traced_sizes(tmp_path):
    art = str(tmp_path / "g.tg")
    proc = tgraph("compile", "zoo:gpt-tiny", "-o", art, "--batch", "3", "--seq-len", "5")
    assert proc.returncode == 0, proc.stderr
    proc = tgraph("run", art)
    assert proc.returncode == 0, proc.stderr
    assert "random inputs of the traced sizes (batch=3, seq=5)" in proc.stderr
    assert "[3, 5, " in proc.stdout  # logits of the traced size
    assert_one_line_error(tgraph("run", art, "--random", "--inputs", "x.npz"), "not both", code=2)


def test_bench_takes_the_contracts_backend_names():
    from tgraph.bench.contenders import expand_contenders

    assert expand_contenders(("eager", "torch", "ort"), ()) == (
        "eager", "tgraph-torch", "tgraph-ort"
    )  # fmt: skip
    assert "tgraph-ort (or ort)" in " ".join(tgraph("bench", "--help").stdout.split())


def test_a_pt2_program_compiles_on_the_torch_backend(tmp_path):
    from tgraph.models import build, example_inputs

    model = build("gpt-tiny")
    inputs = example_inputs(model, batch=2, seq=8)
    torch.export.save(torch.export.export(model, (), inputs), tmp_path / "g.pt2")
    art = str(tmp_path / "g.tg")
    proc = tgraph("compile", str(tmp_path / "g.pt2"), "-o", art, "--backend", "torch")
    assert proc.returncode == 0, proc.stderr
    np.savez(tmp_path / "x.npz", input_ids=inputs["input_ids"].numpy())
    proc = tgraph("run", art, "--inputs", str(tmp_path / "x.npz"), "--output",
                  str(tmp_path / "o.npz"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        want = model(**inputs)
    got = torch.from_numpy(np.load(tmp_path / "o.npz")["output"])
    assert torch.allclose(got, want, atol=1e-4)


def test_dump_dir_without_pipeline_dumps_every_default_pass(tmp_path):
    from tgraph.passes.manager import parse_pipeline

    proc = tgraph("dump", "zoo:gpt-tiny", "--dump-dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    n = len(parse_pipeline("default"))
    assert len(list((tmp_path / "d").glob("[0-9][0-9]-*.txt"))) == n + 1  # + 00-input


@pytest.mark.parametrize(
    "args, fragment, code",
    [
        (("compile", "zoo:gpt-tiny", "--batch", "0"), "'--batch': 0 is not in the range", 1),
        (("compile", "zoo:gpt-tiny", "--seq-len", "-3"), "'--seq-len': -3 is not in", 1),
        (("compile", "zoo:gpt-tiny", "--pipeline", "default,,cse"), "entry 2 is empty", 1),
        (("compile", "zoo:gpt-tiny", "--max-rel-error", "0"), "'--max-rel-error': 0", 1),
        (("bench", "zoo:gpt-tiny", "--repeats", "0"), "'--repeats': 0 is not in", 1),
        (("bench", "zoo:gpt-tiny", "--backends", "eager,,ort"), "entry 2 is empty", 1),
        (("bench", "zoo:gpt-tiny", "--pipelines", "default,int9"), "unknown pass 'int9'", 1),
        (("bench", "zoo:gpt-tiny", "--backends", "eager,nope"), "unknown contender(s) nope", 1),
        (("run", "ART", "--random", "--batch", "0"), "'--batch': 0 is not in the range", 1),
    ],
)
def test_bad_numbers_and_names_fail_before_any_work(tmp_path, args, fragment, code):
    out = tmp_path / "out.tg"
    args = [str(out) if a == "ART" else a for a in args]
    if args[0] == "compile":
        args += ["-o", str(out)]
    assert_one_line_error(tgraph(*args), fragment, code=code)
    assert not out.exists()
