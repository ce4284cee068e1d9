import functools
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from model_cases import get_case  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@functools.cache
def _traced(name: str):
    import tgraph

    case = get_case(name)
    graph = tgraph.trace(case.model, case.make(2, 16, 0))
    return case, graph


@pytest.fixture
def traced_case():
    """``traced_case(name) -> (case, graph)``, traced once per session at batch 2, seq 16."""
    return _traced
