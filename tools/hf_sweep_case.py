"""One architecture of the sweep (tools/hf_sweep.py runs this in a subprocess per model).

    python tools/hf_sweep_case.py MODEL_TYPE CLASS_NAME OUT.json

Builds the tiny model, exports it (batch and sequence dynamic), compiles it with
``tgraph.compile`` (default pipeline) on ORT, lowers the same optimized graph to torch and
the reference interpreter, and compares every output tensor with eager at two sizes other
than the traced one (rtol = atol = 1e-4). Writes one JSON record; the first failure of each
stage is one line.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

import torch
import torch.utils._pytree as pytree

sys.path.insert(0, os.path.dirname(__file__))

from hf_sweep_config import make_inputs, modality, shapes, tiny_config  # noqa: E402

TOL = 1e-4
BACKENDS = ("reference", "ort", "torch")


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def build(model_type: str, class_name: str) -> tuple[torch.nn.Module, str]:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_class = getattr(transformers, class_name)
    kind = modality(model_class)
    if kind in ("multimodal", "other"):
        return None, kind
    torch.manual_seed(0)
    config = tiny_config(CONFIG_MAPPING[model_type])
    model = model_class(config).eval()
    # Transformers zero-initializes biases and some routers: all-equal router scores make
    # topk's choice among ties implementation-defined. Small noise on every parameter breaks
    # the ties (and lets a bias that is dropped show).
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=noise) * 0.02)
    return model, kind


def tensors(out: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


def compare(got: Any, want: Any, size: tuple[int, int]) -> str | None:
    """None when every output tensor matches, else what differs (one line)."""
    g, w = tensors(got), tensors(want)
    if len(g) != len(w):
        return f"at {size}: {len(g)} output tensors, eager has {len(w)}"
    for i, (a, b) in enumerate(zip(g, w)):
        if a.shape != b.shape:
            return f"at {size}: output {i} has shape {tuple(a.shape)}, eager {tuple(b.shape)}"
        if not torch.allclose(a.float(), b.float(), rtol=TOL, atol=TOL, equal_nan=True):
            err = (a.float() - b.float()).abs().max().item()
            return f"at {size}: output {i} {tuple(b.shape)} differs from eager by {err:.2e}"
    return None


def dynamic_dims(ep: Any, main: str) -> tuple[bool, bool]:
    """Whether export kept the main input's batch and sequence dims symbolic.

    A dim the model's code specialized (a Python loop over the positions: Mamba, RWKV)
    fails the shared-dims export and comes back from the ``Dim.AUTO`` retry as a SymInt
    whose expression is the traced size itself (``16``): static, though a SymInt.
    """
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == main:
            shape = node.meta["val"].shape
            sym = [isinstance(d, torch.SymInt) and not d.node.expr.is_number for d in shape]
            return sym[0], len(sym) > 1 and sym[-1 if main != "input_ids" else 1]
    return False, False


def check_sizes(kind: str, model: torch.nn.Module, seq_dynamic: bool):
    """(traced size, candidate check sizes): a static sequence is checked at its size only."""
    traced, others = shapes(model, kind)
    if not seq_dynamic:
        others = list(dict.fromkeys((b, traced[1]) for b, _ in others if b != traced[0]))
    return traced, others


def refusal(graph: Any, kwargs: dict) -> str | None:
    """Why the traced graph refuses inputs of these sizes (a size guard of the trace, a
    bound of a dim), or None. Inputs bind symbols by the graph input of their name."""
    from tgraph.frontend.limits import LimitError, check_limits
    from tgraph.ir import SymDim

    bindings = {}
    for v in graph.inputs:
        t = kwargs.get(v.name)
        if isinstance(t, torch.Tensor) and t.dim() == v.rank:
            for d, n in zip(v.shape, t.shape):
                if isinstance(d, SymDim) and d.is_symbol():
                    bindings[d.name] = int(n)
    try:
        check_limits(graph, [], bindings)
    except LimitError as e:
        return one_line(e)
    return None


def pick_sizes(graph, model, kind, candidates, count: int = 2):
    """The first ``count`` candidate (size, kwargs) the traced graph accepts, and the refused
    ones: ``{"BxS": why}``. A model that branches on sizes is checked where its trace holds."""
    chosen, refused = [], {}
    for seed, (b, s) in enumerate(candidates, start=1):
        kwargs = make_inputs(model, kind, b, s, seed)
        why = refusal(graph, kwargs)
        if why:
            refused[f"{b}x{s}"] = why
        else:
            chosen.append(((b, s), kwargs))
        if len(chosen) == count:
            break
    return chosen, refused


def run_backends(model, kind, traced_kwargs, candidates, record: dict) -> dict[str, str]:
    """Per backend "ok" or the first failure: compile once (ort), lower the graph twice more,
    check at two candidate sizes the graph accepts (``record`` gets which, and the refused)."""
    import tgraph
    from tgraph.api import CompiledModel, model_tensors
    from tgraph.backends import get_backend

    results: dict[str, str] = {}
    try:
        cm = tgraph.compile(model, traced_kwargs, backend="ort")
    except Exception as e:  # noqa: BLE001 - the sweep records every failure as one line
        return {b: f"compile: {one_line(e)}" for b in BACKENDS}
    compiled = {"ort": cm}
    for backend in ("reference", "torch"):
        try:
            runner = get_backend(backend).lower(cm.graph, "cpu", params=model_tensors(model))
            compiled[backend] = CompiledModel(cm.graph, runner, backend, "cpu", cm.report)
        except Exception as e:  # noqa: BLE001
            results[backend] = f"lower: {one_line(e)}"
    chosen, refused = pick_sizes(cm.graph, model, kind, candidates)
    record.update(checked_sizes=[list(size) for size, _ in chosen], refused_sizes=refused)
    if len(chosen) < 2:
        first = next(iter(refused.values()), "no candidate sizes")
        return {b: f"sizes: the traced graph accepts {len(chosen)} of the {len(candidates)} "
                f"candidate sizes ({first})" for b in BACKENDS}  # fmt: skip
    for (b, s), kwargs in chosen:
        with torch.no_grad():
            want = model(**kwargs)
            for backend, cmodel in compiled.items():
                if backend in results:
                    continue
                try:
                    problem = compare(cmodel(**kwargs), want, (b, s))
                except Exception as e:  # noqa: BLE001
                    problem = f"run at {(b, s)}: {one_line(e)}"
                if problem:
                    results[backend] = problem
    return {b: results.get(b, "ok") for b in BACKENDS}


def sweep_one(model_type: str, class_name: str) -> dict[str, Any]:
    from tgraph.frontend.trace import export

    record: dict[str, Any] = {"arch": model_type, "class": class_name, "exports": "no"}
    try:
        model, kind = build(model_type, class_name)
    except Exception as e:  # noqa: BLE001
        record.update(modality="?", failure=f"build: {one_line(e)}")
        return record
    record["modality"] = kind
    if model is None:
        record.update(exports="skip", failure=f"{kind} model: not in the sweep's scope")
        return record
    traced, _ = shapes(model, kind)
    kwargs = make_inputs(model, kind, *traced, seed=0)
    try:
        with torch.no_grad():
            model(**kwargs)
    except Exception as e:  # noqa: BLE001
        record.update(failure=f"eager: {one_line(e)}")
        return record
    started = time.time()
    try:
        ep = export(model, (), kwargs)
    except Exception as e:  # noqa: BLE001
        record.update(failure=f"export: {one_line(e)}")
        return record
    batch_dyn, seq_dyn = dynamic_dims(ep, model.main_input_name)
    if not batch_dyn or (kind == "text" and not seq_dyn):
        record.update(exports="static", failure="export: batch or sequence dim specialized")
        return record
    record.update(exports="yes", export_s=round(time.time() - started, 1))
    traced, candidates = check_sizes(kind, model, seq_dyn)
    started = time.time()
    record.update(run_backends(model, kind, kwargs, candidates, record))
    record["compile_and_check_s"] = round(time.time() - started, 1)
    bad = [record[b] for b in BACKENDS if record[b] != "ok"]
    record["failure"] = bad[0] if bad else ""
    return record


def main() -> None:
    model_type, class_name, out = sys.argv[1:4]
    start = time.time()
    try:
        record = sweep_one(model_type, class_name)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        record = {"arch": model_type, "class": class_name, "exports": "no",
                  "failure": f"sweep: {one_line(e)}"}  # fmt: skip
    record["seconds"] = round(time.time() - start, 1)
    with open(out, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
