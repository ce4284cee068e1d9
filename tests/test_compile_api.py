"""tgraph.compile and CompiledModel: arguments, checks and errors a user meets first."""

import pytest
import torch
from model_cases import get_case

import tgraph


@pytest.fixture(scope="module")
def bert():
    case = get_case("bert-tiny")
    return case, tgraph.compile(case.model, case.make(2, 16, 0), backend="reference")


def test_unknown_backend_or_device_lists_the_valid_ones():
    model = get_case("gpt-tiny").model
    with pytest.raises(
        ValueError, match="unknown backend 'onnx'; valid backends: ort, torch, reference"
    ):
        tgraph.compile(model, {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, backend="onnx")
    with pytest.raises(ValueError, match="unknown device 'tpu'; valid devices: cpu, cuda"):
        tgraph.compile(model, {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, device="tpu")


def test_unknown_pipeline_fails_before_tracing():
    model = get_case("gpt-tiny").model
    with pytest.raises(tgraph.PipelineError, match="did you mean fuse-attention"):
        tgraph.compile(
            model, {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, pipeline="fuse-atention"
        )


def test_positional_and_keyword_calls_both_work(bert):
    case, cm = bert
    inputs = case.make(2, 6, 1)
    by_name = cm(**inputs)
    by_position = cm(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    torch.testing.assert_close(by_name["last_hidden_state"], by_position["last_hidden_state"])


def test_wrong_rank_names_the_input_and_the_expected_shape(bert):
    case, cm = bert
    inputs = case.make(2, 6, 1)
    inputs["input_ids"] = inputs["input_ids"][0]
    with pytest.raises(
        tgraph.InputError, match=r"input input_ids: expected int64\[batch, seq\], got int64\[6\]"
    ):
        cm(**inputs)


def test_wrong_dtype_and_inconsistent_sizes(bert):
    case, cm = bert
    inputs = case.make(2, 6, 1)
    with pytest.raises(tgraph.InputError, match="input attention_mask: expected int64"):
        cm(**{**inputs, "attention_mask": inputs["attention_mask"].float()})
    with pytest.raises(tgraph.InputError, match="seq is 6 in another input"):
        cm(**{**inputs, "attention_mask": inputs["attention_mask"][:, :4]})


def test_missing_and_unexpected_inputs(bert):
    case, cm = bert
    inputs = case.make(2, 6, 1)
    with pytest.raises(tgraph.InputError, match=r"missing \['input_ids'\]"):
        cm(attention_mask=inputs["attention_mask"], token_type_ids=inputs["token_type_ids"])
    with pytest.raises(tgraph.InputError, match=r"unexpected \['labels'\]"):
        cm(**inputs, labels=inputs["input_ids"])


def test_ort_backend_is_inference_only():
    case = get_case("gpt-tiny")
    cm = tgraph.compile(case.model, case.make(2, 8, 0), backend="ort")
    x = torch.randn(1, 5, 32, requires_grad=True)

    class Embeds(torch.nn.Module):  # a model whose input can require grad
        def forward(self, h):
            return h * 2.0

    cm2 = tgraph.compile(Embeds(), (torch.randn(1, 5, 32),), backend="ort")
    with pytest.raises(RuntimeError, match="inference-only"):
        cm2(x)
    with torch.no_grad():
        cm2(x)  # fine without autograd
    assert len(list(cm.parameters())) == 0


def test_dump_dir_holds_one_record_per_pass(tmp_path):
    import json

    case = get_case("gpt-tiny")
    cm = tgraph.compile(case.model, case.make(2, 8, 0), backend="reference", dump_dir=str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["name"] for p in summary["passes"]] == [r.name for r in cm.report]
    assert len(cm.report) == len(cm.pipeline.split(","))


def test_progress_reports_each_step_and_the_default_backend_is_ort():
    case = get_case("gpt-tiny")
    messages = []
    cm = tgraph.compile(case.model, case.make(2, 8, 0), progress=messages.append)
    assert cm.backend == "ort"
    n = len(cm.report)
    assert messages[0] == "tracing with torch.export"
    assert messages[1] == f"pass 1/{n}: {cm.report[0].name}"
    assert messages[-1] == "lowering to ort"
    assert len(messages) == n + 2
