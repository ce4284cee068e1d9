"""tools/torch_linear_kernels.py on tiny shapes: both kernels timed per shape, outputs
compared, and a bad shape is a one-line error."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import torch_linear_kernels  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


def test_both_kernels_per_shape(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    argv = ["torch_linear_kernels", "--shapes", "1x32x48", "4x32x48", "--layers", "2",
            "--rounds", "2", "--threads", "1", "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    torch_linear_kernels.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == ["1x32x48", "4x32x48"]
    for r in rows:
        assert r["max_abs_diff"] < 1e-4
        assert all(r[k]["us"] > 0 and r[k]["weight_gbs"] > 0 for k in ("F.linear", "oneDNN packed"))
    assert "oneDNN packed" in capsys.readouterr().out


def test_bad_shape_is_one_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["torch_linear_kernels", "--shapes", "1x32"])
    with pytest.raises(SystemExit, match="is not MxKxN"):
        torch_linear_kernels.main()
