"""verify=True also verifies when an accuracy budget picks the pipeline."""

import bad_passes  # noqa: F401  (registers the test-only broken passes)
import pytest

import tgraph
from tgraph.models import build, example_inputs


def test_verify_with_an_accuracy_budget_checks_the_chosen_pipeline():
    model = build("gpt-tiny")
    inputs = example_inputs(model, batch=2, seq=8)
    budget = {"max_rel_error": 0.5}
    with pytest.raises(tgraph.PassError, match="test-bad-norm-weight"):
        tgraph.compile(model, inputs, backend="reference", pipeline="test-bad-norm-weight,int8",
                       verify=True, accuracy=budget)  # fmt: skip
    cm = tgraph.compile(model, inputs, backend="reference", pipeline="int8", verify=True,
                        accuracy=budget)  # fmt: skip
    assert cm.accuracy is not None and any(r.name == "quantize-int8" for r in cm.report)
