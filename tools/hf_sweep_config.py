"""Tiny random configs and example inputs for any transformers architecture (tools/hf_sweep.py).

A config starts from its class defaults; every size field is shrunk by name (2 layers, hidden
32, 4 heads, vocabulary 100), recursively through sub-configs (``text_config``,
``vision_config``, ``encoder``), and lists whose length is the layer count are cut to it.
Rules keyed on a family's fields, not its name, serve the rest (windowed vision stages,
latent attention, expert counts); what still fails to build is reported as such.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

LAYERS, HIDDEN, HEADS, HEAD_DIM, FFN, VOCAB = 2, 32, 4, 8, 64, 100

# Field name -> what it sizes. A field is shrunk only when its default is a larger int.
_FIELDS: dict[str, int] = {}
for _names, _value in (
    (
        "num_hidden_layers num_layers n_layer n_layers encoder_layers decoder_layers "
        "num_encoder_layers num_decoder_layers depth",
        LAYERS,
    ),
    (
        "hidden_size d_model n_embd n_embed dim embed_dim word_embed_proj_dim model_dim "
        "d_embed projection_dim",
        HIDDEN,
    ),
    (
        "num_attention_heads n_head n_heads encoder_attention_heads decoder_attention_heads "
        "num_heads attention_heads",
        HEADS,
    ),
    ("head_dim d_kv attention_head_dim kv_channels d_head rotary_dim", HEAD_DIM),
    (
        "intermediate_size ffn_dim encoder_ffn_dim decoder_ffn_dim d_ff n_inner hidden_dim "
        "inner_hidden_size moe_intermediate_size shared_expert_intermediate_size "
        "ffn_hidden_size mlp_dim d_inner",
        FFN,
    ),
    ("vocab_size n_vocab", VOCAB),
    ("embedding_size", 16),
    ("max_position_embeddings n_positions max_target_positions", 64),
    ("num_experts num_local_experts n_routed_experts moe_num_experts", 4),
    ("num_experts_per_tok moe_topk top_k", 2),
    ("kv_lora_rank q_lora_rank", 16),  # multi-head latent attention (DeepSeek)
    ("qk_nope_head_dim qk_rope_head_dim v_head_dim", HEAD_DIM),
    ("qk_head_dim", 2 * HEAD_DIM),
    ("image_size", 32),
):
    for _name in _names.split():
        _FIELDS[_name] = _value
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "n_head_kv")
_TOKEN_IDS = (
    "pad_token_id bos_token_id eos_token_id sep_token_id cls_token_id mask_token_id "
    "decoder_start_token_id unk_token_id"
).split()
# Per-stage lists of vision backbones: widths shrink, depths become 1, heads 1-2.
_STAGE_WIDTHS = ("hidden_sizes", "embed_dims", "dims", "embed_dim", "neck_hidden_sizes")
_CHANNELS = ("conv_dim", "tdnn_dim")  # per-layer channels of audio feature extractors
_STAGE_DEPTHS = ("depths", "num_layers", "depth")
_STAGE_HEADS = ("num_heads", "num_attention_heads")


def _layer_count(d: dict) -> int | None:
    for name in ("num_hidden_layers", "num_layers", "n_layer", "n_layers"):
        if isinstance(d.get(name), int):
            return d[name]
    return None


def _shrink_int(name: str, value: int, d: dict) -> int:
    if name in _KV_HEADS:
        heads = next(
            (d[h] for h in ("num_attention_heads", "n_head") if isinstance(d.get(h), int)), 0
        )
        return value if value <= 1 else (HEADS if value >= heads else 2)
    if name in _TOKEN_IDS:
        return value if value < VOCAB else VOCAB - 1 - _TOKEN_IDS.index(name)
    target = _FIELDS.get(name)
    return target if target is not None and value > target else value


def _shrink_list(name: str, value: list, layers: int | None) -> list:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if layers and len(value) == layers:
            return value[:LAYERS]
        return value
    if name in _STAGE_WIDTHS:
        return [16 * 2**i if v > 16 * 2**i else v for i, v in enumerate(value)]
    if name in _CHANNELS:
        return [min(v, HIDDEN) for v in value]
    if name in _STAGE_DEPTHS:
        return [1] * len(value)
    if name in _STAGE_HEADS:  # powers of two: they divide the stage widths
        return [2 ** (min(v, 2**i).bit_length() - 1) for i, v in enumerate(value)]
    if layers and len(value) == layers:
        return value[:LAYERS]
    return value


def shrink(d: dict) -> dict:
    """A config dict with every size field made tiny (sub-config dicts recursively)."""
    layers = _layer_count(d)
    out: dict = {}
    for name, value in d.items():
        if isinstance(value, dict) and ("model_type" in value or name.endswith("config")):
            out[name] = shrink(value)
        elif isinstance(value, bool) or value is None:
            out[name] = value
        elif isinstance(value, int):
            out[name] = _shrink_int(name, value, d)
        elif isinstance(value, (list, tuple)):
            out[name] = type(value)(_shrink_list(name, list(value), layers))
        else:
            out[name] = value
    for key in ("out_features", "out_indices"):  # backbone stages: the defaults of fewer layers
        if out.get(key) is not None:
            out[key] = None
    if out.get("num_experts_per_tok", 0) is None and out.get("n_routed_experts"):
        out["num_experts_per_tok"] = 2  # a default of None: the class's own default is broken
    if isinstance(out.get("layer_types"), list) and len(out["layer_types"]) > LAYERS:
        out["layer_types"] = out["layer_types"][:LAYERS]
    return out


def tiny_config(config_class: type) -> Any:
    """The config class's defaults with every size field shrunk."""
    defaults = config_class().to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type"):
        defaults.pop(key, None)
    kwargs = shrink(defaults)
    if isinstance(kwargs.get("window_size"), int) and "depths" in kwargs:
        # windowed vision stages (Swin family): a 16 x 16 patch grid halves per stage, so a
        # window of 2 fits every stage of the 32 x 32 image
        kwargs.update(patch_size=2, window_size=2)
    config = config_class(**kwargs)
    config._attn_implementation = "eager"  # sdpa/flash variants differ per install
    # MoE experts as gathered weights + bmm: the grouped_mm default counts tokens per expert
    # with histc and slices by the counts (data-dependent shapes, which export cannot keep).
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "batched_mm"
    return config


# -- example inputs --------------------------------------------------------------------------------

TEXT_INPUTS = ("input_ids",)
IMAGE_INPUTS = ("pixel_values",)
AUDIO_INPUTS = ("input_features", "input_values")


def modality(model_class: type) -> str:
    """ "text", "vision", "audio", "multimodal" (text plus images or audio), or "other"."""
    main = getattr(model_class, "main_input_name", "")
    params = set(inspect.signature(model_class.forward).parameters)
    if main in TEXT_INPUTS:
        others = params & {"pixel_values", "input_features", "input_values", "pixel_values_videos"}
        return "multimodal" if others else "text"
    if main in IMAGE_INPUTS:
        return "multimodal" if "input_ids" in params else "vision"
    if main in AUDIO_INPUTS:
        return "audio"
    return "other"


def _sub(config: Any, *names: str) -> Any:
    for name in names:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            return sub
    return config


def _image_shape(config: Any) -> tuple[int, int, int]:
    vision = _sub(config, "vision_config", "backbone_config")
    size = getattr(vision, "image_size", None) or getattr(config, "image_size", 32)
    h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
    channels = getattr(vision, "num_channels", None) or getattr(config, "num_channels", 3)
    return channels, h, w


def make_inputs(model: torch.nn.Module, kind: str, batch: int, seq: int, seed: int) -> dict:
    """Keyword inputs for ``model`` at (batch, seq): ``seq`` is tokens for text, frames or
    samples for audio and unused for images (their size is the config's)."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    params = inspect.signature(model.forward).parameters
    main = model.main_input_name
    kwargs: dict[str, Any] = {}
    if kind == "text":
        vocab = getattr(config, "vocab_size", None) or getattr(
            _sub(config, "text_config"), "vocab_size", VOCAB
        )
        kwargs[main] = torch.randint(0, min(vocab, VOCAB), (batch, seq), generator=g)
        if "attention_mask" in params:
            mask = torch.ones(batch, seq, dtype=torch.long)
            mask[-1, seq - max(1, seq // 4) :] = 0  # the last row ends in padding
            kwargs["attention_mask"] = mask
    elif kind == "vision":
        kwargs[main] = torch.randn(batch, *_image_shape(config), generator=g)
    elif main == "input_values" and getattr(config, "num_mel_bins", None):
        # a spectrogram (B, frames, mel bins) of the config's fixed length (AST)
        frames = getattr(config, "max_length", seq)
        kwargs[main] = torch.randn(batch, frames, config.num_mel_bins, generator=g)
    elif main == "input_values":
        kwargs[main] = torch.randn(batch, seq, generator=g)
    else:  # input_features: (B, mel bins, frames)
        bins = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", 80)
        kwargs[main] = torch.randn(batch, bins, seq, generator=g)
    if "decoder_input_ids" in params:
        dec_vocab = min(getattr(config, "vocab_size", VOCAB) or VOCAB, VOCAB)
        kwargs["decoder_input_ids"] = torch.randint(0, dec_vocab, (batch, min(seq, 8)), generator=g)
    if "use_cache" in params:
        kwargs["use_cache"] = False
    _required_extras(kwargs, params, batch, seq, g)
    if "noise" in params:
        _noise(model, kwargs, g)
    return kwargs


def _noise(model: torch.nn.Module, kwargs: dict, g: torch.Generator) -> None:
    """``noise=`` for a forward that samples it when not given (ViTMAE's random masking:
    uniform noise whose argsort picks the kept patches): the shape of the one ``torch.rand``
    an eager call makes. A compiled graph cannot sample as eager does; with the noise an
    input, both compute the same function."""
    from torch.utils._python_dispatch import TorchDispatchMode

    sampled: list[tuple[int, ...]] = []

    class _Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kw=None):
            if func is torch.ops.aten.rand.default:
                sampled.append(tuple(args[0]))
            return func(*args, **(kw or {}))

    with torch.no_grad(), _Record():
        model(**kwargs)
    if len(sampled) == 1:
        kwargs["noise"] = torch.rand(sampled[0], generator=g)


def _required_extras(kwargs: dict, params, batch: int, seq: int, g: torch.Generator) -> None:
    """Inputs some forwards require beyond the main one, by name: layout boxes (BROS) and
    masks over the main input's positions (an all-ones ``input_features_mask``)."""
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind not in (
            p.VAR_POSITIONAL,
            p.VAR_KEYWORD,
        )
        if name in kwargs or name == "self":
            continue
        if name == "bbox":  # (B, T, 4) boxes x0 <= x1, y0 <= y1 in [0, 1000]
            corners = torch.randint(0, 1000, (batch, seq, 2, 2), generator=g).sort(dim=2).values
            kwargs[name] = corners.transpose(2, 3).reshape(batch, seq, 4)
        elif required and name.endswith("_mask"):
            kwargs[name] = torch.ones(batch, seq, dtype=torch.long)


def shapes(model: torch.nn.Module, kind: str) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(traced (batch, seq), the other sizes to check, in order of preference): the sweep
    checks the first two that the traced graph's size guards accept."""
    config = model.config
    if kind == "audio" and model.main_input_name == "input_values":
        return (2, 1600), [(1, 1200), (3, 2000), (1, 2400), (3, 1800), (1, 2800), (3, 3200)]
    if kind == "audio":  # a sequence dim that export keeps static is checked at its size only
        f = 2 * getattr(config, "max_source_positions", 0) or 64
        return (2, f), [(1, f - 16), (3, f + 16), (1, f + 32), (3, f - 32), (1, f + 48)]
    if kind == "vision":
        return (2, 0), [(1, 0), (3, 0), (4, 0)]
    return (2, 16), [(1, 7), (3, 11), (3, 7), (1, 11), (3, 13), (1, 5), (4, 9), (3, 24), (1, 32)]
