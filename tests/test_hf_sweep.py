"""tools/hf_sweep.py: one architecture end to end, and the table's arithmetic."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

import hf_sweep  # noqa: E402
from hf_tiny import tiny_model  # noqa: E402


def test_tiny_configs_are_tiny_and_keep_token_ids_in_the_vocabulary():
    model = tiny_model("bart", "BartModel")
    c = model.config
    assert (c.d_model, c.encoder_layers, c.vocab_size) == (32, 2, 1000)
    assert max(c.pad_token_id, c.bos_token_id, c.eos_token_id) < c.vocab_size
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_a_supported_architecture_passes_every_stage():
    row = hf_sweep.check_one("bert", "BertModel")
    assert row == {"type": "bert", "class": "BertModel", "exports": True, "failure": None,
                   "reference": True, "ort": True, "torch": True}  # fmt: skip


def test_the_table_counts_exported_architectures_only():
    rows = [
        {"class": "A", "exports": True, "reference": True, "ort": True, "torch": True,
         "failure": None},
        {"class": "B", "exports": True, "reference": True, "ort": False, "torch": True,
         "failure": "ort: x | y"},
        {"class": "C", "exports": False, "failure": "export: no"},
    ]  # fmt: skip
    text = hf_sweep.table(rows)
    assert "| B | yes | yes | no | yes | ort: x \\| y |" in text
    assert text.endswith("3 architectures, 2 export with dynamic batch and sequence; 1 of those "
                         "(50%) match eager on ort and torch.\n")  # fmt: skip
