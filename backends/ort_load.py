"""How ONNX Runtime gets the weights of an in-memory model, and what it does with them.

``to_onnx(external=...)`` leaves big arrays out of the proto (``tensor()`` in
onnx_lowering.py). :func:`open_session` hands them to ONNX Runtime in one of two ways:

- **external** (``SessionOptions.add_external_initializers``): no protobuf copy, but ORT
  1.32 copies each array into its own allocator while loading (the :func:`reads_after_load`
  probe says so), so these arrays are only read at load.
- **shared** (``SessionOptions.add_initializer``): ORT uses the caller's buffer as the
  initializer itself, no copy at all. A kernel that prepacks its weight (MLAS packs
  ``FusedMatMul``'s B) reads it once; any other reader reads it for as long as the session
  lives. ORT resolves shared names only against initializers of the model, so the model
  declares them as external data in a sparse placeholder file that is never read: it is
  saved to a temporary directory and loaded by path.

Whether a session reads an array after load is a property of the ORT build, not something
to assume: :func:`reads_after_load` asks ORT with a one-node model, once per process.
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

__all__ = ["open_session", "reads_after_load"]

PLACEHOLDER = "placeholder.bin"  # the sparse file that shared initializers name


def open_session(
    model: onnx.ModelProto,
    options: ort.SessionOptions,
    providers: list,
    external: dict[str, np.ndarray],
    shared: set[str] = frozenset(),
    **kwargs,
) -> tuple[ort.InferenceSession, dict[str, ort.OrtValue], tempfile.TemporaryDirectory | None]:
    """An InferenceSession over ``model``, whose initializers named in ``external`` are
    data-less protos (data_location EXTERNAL); those also in ``shared`` are shared.

    Returns the session, the OrtValues over the arrays (they must outlive the session) and
    the temporary directory of the placeholder (None when nothing is shared).
    ``kwargs`` go to ``InferenceSession`` (``disabled_optimizers``).
    """
    values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in external.items()}
    copied = [name for name in external if name not in shared]
    if copied:
        options.add_external_initializers(copied, [values[n] for n in copied])
    share = [name for name in external if name in shared]
    if not share:
        session = ort.InferenceSession(model.SerializeToString(), options, providers, **kwargs)
        return session, values, None
    for name in share:
        options.add_initializer(name, values[name])
    tmp = tempfile.TemporaryDirectory(prefix="tgraph-ort-")
    offset = 0
    protos = {t.name: t for t in model.graph.initializer}
    for name in share:  # point each at its own (never read) span of the placeholder
        proto = protos[name]
        del proto.external_data[:]
        for key, value in (("location", PLACEHOLDER), ("offset", offset),
                           ("length", external[name].nbytes)):  # fmt: skip
            proto.external_data.add(key=key, value=str(value))
        offset += (external[name].nbytes + 63) // 64 * 64
    with open(os.path.join(tmp.name, PLACEHOLDER), "wb") as f:
        f.truncate(offset)  # sparse: no bytes on disk
    path = os.path.join(tmp.name, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    session = ort.InferenceSession(path, options, providers, **kwargs)
    return session, values, tmp


_PROBES = {"Gather": 64, "FusedMatMul": 64}  # op -> rows of the probed array


@functools.cache
def reads_after_load(op: str, shared: bool = False, config: tuple = ()) -> bool:
    """Does an ORT CPU session read ``op``'s constant input again after load, when the
    array is handed over external (``shared=False``) or shared? False means ORT copied or
    prepacked it at load and the caller's array can be released or overwritten.

    ``config``: (key, value) session config entries the real sessions set. Probed by
    overwriting the array with NaN after the first run and running again.
    """
    if op not in _PROBES:
        raise ValueError(f"reads_after_load: no probe for op {op!r}; probed: {sorted(_PROBES)}")
    rows = _PROBES[op]
    array = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32)
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=array.shape)
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="tgraph-in-memory")
    if op == "Gather":
        x = helper.make_tensor_value_info("x", TensorProto.INT64, [2])
        node = helper.make_node("Gather", ["w", "x"], ["y"], axis=0)
        feed = np.array([1, 3], dtype=np.int64)
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])
        node = helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft",
                                transB=1, alpha=1.0)  # fmt: skip
        feed = np.ones((2, 64), dtype=np.float32)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "probe", [x], [y], initializer=[weight])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in config:
        options.add_session_config_entry(key, value)
    session, values, tmp = open_session(
        model, options, ["CPUExecutionProvider"], {"w": array}, {"w"} if shared else set()
    )
    before = session.run(None, {"x": feed})[0]
    array[...] = np.nan
    after = session.run(None, {"x": feed})[0]
    del session, values, tmp
    return not np.array_equal(before, after, equal_nan=False)
