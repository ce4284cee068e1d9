"""Bytes of weights one decode step reads, counted in a converted peer model's files.

A decode step reads every weight once, except embedding tables, of which it reads one row
per sequence: tables whose only users are lookups (Gather) are left out; a table that the
LM head also reads counts. Compressed weights count as stored (packed int4/int8 plus their
scales and zero points). In a mixture-of-experts model, a token reads its k experts of E:
a weight whose leading dim is the expert count E (the stacked experts and their scales,
in both peers' files) counts k/E of its bytes, as tgraph's own count does (``graph_weight_bytes``), with
k and E from the converted model's config.json.
"""

from __future__ import annotations

import json
import os
from typing import Any

# OpenVINO ops between a compressed weight constant and its user (weight decompression).
_OV_DECOMPRESSION = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}


def onnx_weight_bytes(path: str) -> int:
    """Stored bytes of the ONNX model's initializers (packed int4 as stored), less those
    that only Gather-type ops (embedding lookups) read."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    experts, share = expert_share(os.path.dirname(path))
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    total = 0.0
    for init in model.graph.initializer:
        ops = users.get(init.name, set())
        if ops and all(op.startswith("Gather") for op in ops):
            continue
        stacked = experts and len(init.dims) >= 3 and init.dims[0] == experts
        total += _stored_bytes(init) * (share if stacked else 1.0)
    return int(total)


def expert_share(model_dir: str) -> tuple[int, float]:
    """(E, k/E) of a mixture-of-experts model's config.json in ``model_dir``; (0, 1.0) for
    a dense model or no config."""
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return 0, 1.0
    config = config.get("text_config", config)
    experts = config.get("num_local_experts") or config.get("num_experts") or 0
    k = config.get("num_experts_per_tok") or 0
    if not (isinstance(experts, int) and isinstance(k, int) and experts > 1 and k > 0):
        return 0, 1.0
    return experts, min(1.0, k / experts)


def graph_weight_bytes(graph: Any) -> int:
    """Bytes of a tgraph step graph's initializers one decode step reads: packed low-bit
    weights and their scales as stored, less tables whose only users are lookups (``gather``, ``index``,
    ``embedding_int8``, and cache_attention's rotary tables). Counted from the values' types,
    so it holds after a backend has taken the arrays. Expert weights of ``moe_experts`` (and
    its int4 / int8 forms: codes, scales, biases) count k/E of their bytes: one sequence's token reads its k experts of E (at batch B a
    step reads the union of B tokens' experts, up to all of them)."""
    total = 0.0
    for value in graph.initializers.values():
        uses = value.uses()
        if uses and all(_is_lookup(node, index) for node, index in uses):
            continue
        count = 1
        for d in value.shape:
            count *= int(d)
        total += count * value.dtype.numpy.itemsize * _read_fraction(uses)
    return int(total)


def _read_fraction(uses: list) -> float:
    """The share of a weight one token reads: k/E for moe_experts' expert weights, else 1."""
    node, index = uses[0] if uses else (None, 0)
    if node is None or node.op not in _EXPERT_OPS or index < 3:
        return 1.0
    return min(1.0, int(node.inputs[1].shape[1]) / int(node.inputs[3].shape[0]))


# Ops whose inputs 3 on are stacked expert weights (codes, scales and biases): a token reads k of E.
_EXPERT_OPS = {"moe_experts", "moe_experts_int4", "moe_experts_int8"}
# A step reads one row per sequence of these.
_LOOKUP_OPS = {"gather", "index", "embedding_int8", "embedding_int4"}


def _is_lookup(node: Any, index: int) -> bool:
    # cache_attention inputs 7, 8: cos/sin tables, of which a step reads one row per token
    return node.op in _LOOKUP_OPS or (node.op == "cache_attention" and index >= 7)


def _stored_bytes(init: Any) -> int:
    import onnx

    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    count = 1
    for d in init.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def ov_weight_bytes(ir_dir: str) -> int:
    """Bytes of the OpenVINO model's constants, less the tables whose only users (past
    their decompression ops) are Gathers: the embedding lookups."""
    import openvino as ov

    model = ov.Core().read_model(os.path.join(ir_dir, "openvino_model.xml"))
    experts, share = expert_share(ir_dir)
    total = 0.0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        size = op.get_byte_size()
        if size < 2**20 or not _only_gathered(op):  # small constants: not worth the walk
            shape = tuple(op.get_output_shape(0))
            stacked = experts and len(shape) >= 3 and shape[0] == experts
            total += size * (share if stacked else 1.0)
    return int(total)


def _only_gathered(const: Any) -> bool:
    todo, users = [const], set()
    while todo:
        node = todo.pop()
        for out in node.outputs():
            for target in out.get_target_inputs():
                user = target.get_node()
                if user.get_type_name() in _OV_DECOMPRESSION:
                    todo.append(user)
                else:
                    users.add(user.get_type_name())
    return bool(users) and users <= {"Gather"}


def artifact_weight_bytes(tool: str, path: str) -> int:
    """The count for a converted model of ``tool`` ("ort-genai" or "openvino") in ``path``."""
    if tool == "ort-genai":
        return onnx_weight_bytes(os.path.join(path, "model.onnx"))
    return ov_weight_bytes(path)
