"""The named pipelines: ``default``, ``training``, ``none`` and the compression pipelines."""

from tgraph.passes.manager import register_pipeline

# Cleanup first (so fusions meet canonical patterns), then fusions from the leaves up
# (norms, GELU, linear, rotary, attention), then the fusions that need the fused ops
# (skip-norm, qkv merge, layout; nn.MultiheadAttention's head shuffles become batch-first
# once layout has sunk its transposes, and a second layout switches its attention to bsd),
# each stage followed by its visible cleanup.
_DEFAULT = [
    "simplify", "fold-constants", "cse", "dce",
    "fuse-layernorm", "fuse-gelu", "fuse-linear", "fuse-rotary", "fold-cache-rotary",
    "fuse-attention",
    "simplify", "dce",
    "fuse-skip-layernorm", "merge-qkv", "fuse-qkv-attention", "layout",
    "canonicalize-mha", "layout",
    "simplify", "cse", "dce",
]  # fmt: skip
_KEEP = {"fold-constants", "fuse-linear", "layout"}  # passes that can bake weights
_TRAINING = [
    f"{p}{{keep_trainable=true}}" if p in _KEEP else p for p in _DEFAULT if p != "merge-qkv"
]

register_pipeline("none", "", "no passes")
register_pipeline(
    "default", ",".join(_DEFAULT), "inference: cleanup, constant folding, fusions and layout"
)
register_pipeline(
    "training",
    ",".join(_TRAINING),
    "like default, but never bakes trainable parameters into constants (no merge-qkv)",
)

# Compression (see docs/passes.md): the default pipeline, then the compression pass and a
# cleanup that folds its casts and drops the full-precision weights it replaced. The int
# pipelines skip fuse-qkv-attention, whose fused op would hide the projections' linears.
_NO_QKV = [p for p in _DEFAULT if p != "fuse-qkv-attention"]
_COMPRESSION = {
    "bf16": (_DEFAULT, "mixed-precision{dtype=bf16}", "bf16 matmuls/attention, fp32 norms"),
    "fp16": (_DEFAULT, "mixed-precision{dtype=fp16}", "fp16 matmuls/attention, fp32 norms"),
    "int8": (_NO_QKV, "quantize-int8", "dynamic int8 linear layers (per-channel weights)"),
}
# Weight-only pipelines for decoders (docs/compression.md): int8 LM head in both, int8
# (int8-weight) or int4 (int4) embedding tables unless {embedding=fp32}; activations rounded to int8 per block inside
# the matmul (compute=int8: ONNX Runtime's fast MatMulNBits path; {compute=f32} turns it off).
_INT8W = "quantize-int8-weight{compute=int8}"
_WEIGHT_ONLY = {
    "int8-weight": (_NO_QKV, _INT8W, "weight-only int8 linears, LM head and embedding"),
    "int4": (
        _NO_QKV,
        f"quantize-int4{{head=false,compute=int8,block=128}},{_INT8W[:-1]},embedding=int4}}",
        "weight-only int4 linears (blocks of 128), int8 LM head, int4 embedding",
    ),
}
for _name, (_base, _pass, _what) in {**_COMPRESSION, **_WEIGHT_ONLY}.items():
    register_pipeline(
        _name, ",".join([*_base, _pass, "fold-constants", "cse", "dce"]), f"default, then {_what}"
    )
