"""Passes and pipelines are two registries, listed apart."""

import pytest
import torch
from test_cli import tgraph

import tgraph as tg
from tgraph.passes.manager import parse_pipeline


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.nn.functional.gelu(self.lin(x)) + 0.0


def test_list_passes_holds_passes_only_and_marks_the_lossy_ones():
    passes, pipelines = tg.list_passes(), tg.list_pipelines()
    assert not set(passes) & set(pipelines)
    assert {"default", "training", "none", "bf16", "int8"} <= set(pipelines)
    assert passes["quantize-int8"].startswith("(lossy) ")
    assert not passes["cse"].startswith("(lossy)")
    assert pipelines["none"] == {"description": "no passes", "passes": ""}
    assert parse_pipeline(pipelines["default"]["passes"]) == parse_pipeline("default")


def test_every_listed_pass_alone_reports_itself():
    graph = tg.trace(_Tiny().eval(), (torch.randn(2, 4, 8),))
    for name in tg.list_passes():
        if name.startswith("test-"):  # the broken passes other tests register
            continue
        _, records = tg.optimize(graph, name)
        assert [r.name for r in records] == [name]


def test_tgraph_passes_prints_two_sections():
    out = tgraph("passes").stdout
    head, tail = out.split("\npipelines:\n")
    assert head.startswith("passes:\n")
    assert "  cse " in head and "  default " not in head
    assert "  default " in tail and "  cse " not in tail


@pytest.mark.parametrize("text", ["default,,cse", "dce,", ",dce"])
def test_an_empty_pipeline_entry_is_an_error(text):
    with pytest.raises(tg.PipelineError, match="is empty; remove the extra comma"):
        parse_pipeline(text)
    assert parse_pipeline("") == [] and parse_pipeline("none") == []
