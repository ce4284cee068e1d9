"""The CLI does what shared/ARCHITECTURE.md shows: optional flags stay optional."""

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
