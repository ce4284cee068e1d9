"""The peers' converted models for the generation benchmark, made once and cached.

    ONNX Runtime GenAI   python -m onnxruntime_genai.models.builder -i DIR -o OUT -p fp32|int4
                         -e cpu -c TMP   (the model builder's defaults otherwise)
    OpenVINO IR          optimum-cli export openvino --model DIR --task
                         text-generation-with-past --weight-format fp32|int8|int4 OUT
                         (run by the Python that has optimum-intel; nncf compresses int8/int4)

Both tools want a tokenizer in the model directory; a directory without one is staged
(symlinks to its files) next to a WordLevel tokenizer of the model's vocabulary, which only
has to exist: every contender is fed token ids. A conversion lands under
``CACHE/<model>-<fingerprint>/<tool>-<precision>``, where the fingerprint hashes config.json
and the names, sizes and mtimes of the weight files, so a rebuilt model converts again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tgraph.bench.gen_bytes import artifact_weight_bytes
from tgraph.bench.gen_process import last_error_line

# the version of gen_bytes' count a cached record holds (2: k/E of stacked expert weights;
# 3: of their compressed forms too)
BYTES_VERSION = 3
# contender -> (tool, precision) of the converted model it loads
ARTIFACTS = {
    "optimum-intel": ("openvino", "fp32"),
    "ov-genai": ("openvino", "fp32"),
    "ov-genai[int8]": ("openvino", "int8"),
    "ov-genai[int4]": ("openvino", "int4"),
    "ort-genai": ("ort-genai", "fp32"),
    "ort-genai[int4]": ("ort-genai", "int4"),
}
OPTIMUM_PYTHON_ENV = "TGRAPH_OPTIMUM_PYTHON"
CONVERT_TIMEOUT_S = 3600
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_SETUP = "see docs/generation.md, Benchmark"


class Unavailable(Exception):
    """This contender cannot run with what is installed; the message says what to install."""


@dataclass
class Artifact:
    """A converted model: where, its weight bytes per decode step, seconds converting it in
    this run (None when it came from the cache)."""

    path: str
    weight_bytes: int
    convert_s: float | None


@dataclass
class Geometry:
    vocab_size: int
    max_length: int
    kv_bytes_per_token: int  # fp32 K and V of one position over all layers


def model_geometry(model_dir: str) -> Geometry:
    """What the benchmark needs from config.json (read through transformers)."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir}: no config.json; --generate needs a Hugging Face "
                                "causal-LM directory (config.json plus weights)")  # fmt: skip
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    max_length = next((getattr(config, f) for f in ("max_position_embeddings", "n_positions")
                       if isinstance(getattr(config, f, None), int)), 2048)  # fmt: skip
    kv = config.num_hidden_layers * 2 * kv_heads * head_dim * 4
    return Geometry(config.vocab_size, max_length, kv)


def optimum_python(explicit: str | None) -> str | None:
    """The Python with optimum-intel: the one given, $TGRAPH_OPTIMUM_PYTHON, or this one if
    it has optimum-intel; None when none is known."""
    chosen = explicit or os.environ.get(OPTIMUM_PYTHON_ENV)
    if chosen:
        return chosen
    return sys.executable if _has("optimum.intel") else None


def python_for(contender: str, explicit_optimum: str | None) -> str:
    if contender == "optimum-intel":
        return optimum_python(explicit_optimum) or sys.executable
    return sys.executable


def ensure(
    contender: str, model_dir: str, cache_dir: str, explicit_optimum: str | None,
    say: Callable[[str], None],
) -> Artifact | None:  # fmt: skip
    """The converted model ``contender`` loads, made now if it is not cached; None for a
    contender that loads ``model_dir`` itself. Raises Unavailable when the tools are
    missing, RuntimeError when a conversion fails."""
    if contender not in ARTIFACTS:
        return None
    tool, precision = ARTIFACTS[contender]
    _check_runtime(contender)
    key = fingerprint(model_dir)
    root = os.path.join(cache_dir, f"{os.path.basename(os.path.normpath(model_dir))}-{key}")
    out = os.path.join(root, f"{tool}-{precision}")
    cached = _metadata(out, key)
    if cached is not None:
        if cached.get("bytes_version") != BYTES_VERSION:  # counted before the expert share
            cached.update(
                weight_bytes=artifact_weight_bytes(tool, out), bytes_version=BYTES_VERSION
            )
            with open(os.path.join(out, "tgraph-source.json"), "w") as f:
                json.dump(cached, f, indent=2)
        return Artifact(out, cached["weight_bytes"], None)
    unsupported = _metadata(out + ".unsupported", key, "error")
    if unsupported is not None:
        raise RuntimeError(unsupported["error"])
    command_python = _tool_python(tool, explicit_optimum)  # needed only to convert
    say(f"converting for {contender}: {tool} {precision}")
    start = time.perf_counter()
    staged = stage(model_dir, os.path.join(root, "staged"))
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    command = _command(tool, precision, command_python, staged, tmp, root)
    log = os.path.join(
        cache_dir, "logs", f"convert-{os.path.basename(root)}-{tool}-{precision}.log"
    )
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT,
                              timeout=CONVERT_TIMEOUT_S, check=False)  # fmt: skip
    if done.returncode != 0 or not os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        error = f"{tool} {precision}: {last_error_line(log)} (log: {log})"
        if "NotImplementedError" in error:  # the tool's "not supported": no use retrying
            os.makedirs(out + ".unsupported")
            with open(os.path.join(out + ".unsupported", "tgraph-source.json"), "w") as f:
                json.dump({"fingerprint": key, "command": command, "error": error}, f, indent=2)
        raise RuntimeError(error)
    weights = artifact_weight_bytes(tool, tmp)
    with open(os.path.join(tmp, "tgraph-source.json"), "w") as f:
        json.dump({"model": os.path.abspath(model_dir), "fingerprint": key,
                   "command": command, "weight_bytes": weights,
                   "bytes_version": BYTES_VERSION}, f, indent=2)  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return Artifact(out, weights, time.perf_counter() - start)


def _check_runtime(contender: str) -> None:
    """The package the contender runs on, in this Python (optimum-intel's is checked by its
    own worker, in its own venv)."""
    if contender.startswith("ort-genai") and not _has("onnxruntime_genai"):
        raise Unavailable("onnxruntime_genai is not installed (pip install onnxruntime-genai)")
    if contender.startswith("ov-genai") and not _has("openvino_genai"):
        raise Unavailable("openvino_genai is not installed (pip install openvino-genai)")


def _tool_python(tool: str, explicit_optimum: str | None) -> str:
    if tool == "ort-genai":
        return sys.executable
    python = optimum_python(explicit_optimum)
    if python is None:
        raise Unavailable("the OpenVINO IR is exported by optimum-intel: install it in its own "
                          f"venv and pass --optimum-python ({_SETUP})")  # fmt: skip
    return python


def _command(tool: str, precision: str, python: str, staged: str, out: str, root: str) -> list[str]:
    if tool == "ort-genai":
        return [python, "-m", "onnxruntime_genai.models.builder", "-i", staged, "-o", out,
                "-p", precision, "-e", "cpu", "-c", os.path.join(root, "ort-builder-cache")]  # fmt: skip
    command = [python, "-c", "from optimum.commands.optimum_cli import main; main()", "export",
               "openvino", "--model", staged, "--task", "text-generation-with-past",
               "--weight-format", precision, out]  # fmt: skip
    if precision == "int4":
        command[-1:-1] = ["--group-size", str(int4_group_size(staged))]
    return command


def int4_group_size(model_dir: str) -> int:
    """optimum-intel's int4 group (128) when it divides every linear layer's input width,
    else the largest of 64 and 32 that does (nncf refuses a group that does not divide:
    the 58M Llama's MLP is 1376 wide)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    hidden = config.hidden_size
    widths = [hidden, getattr(config, "intermediate_size", None) or
              getattr(config, "n_inner", None) or 4 * hidden]  # fmt: skip
    return next((g for g in (128, 64, 32) if all(w % g == 0 for w in widths)), 32)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def _metadata(out: str, key: str, field: str = "weight_bytes") -> dict | None:
    """The cached conversion's record (or its recorded refusal, ``OUT.unsupported``), when it
    is of this model (by fingerprint)."""
    try:
        with open(os.path.join(out, "tgraph-source.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if meta.get("fingerprint") == key and field in meta else None


def fingerprint(model_dir: str) -> str:
    """A hash of config.json and the weight files' names, sizes and mtimes."""
    h = hashlib.sha1()
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        h.update(f.read())
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".safetensors", ".bin")):
            st = os.stat(os.path.join(model_dir, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def stage(model_dir: str, staged: str) -> str:
    """``model_dir`` itself when it has a tokenizer, else a directory of symlinks to its
    files plus a WordLevel tokenizer.json with one token per id."""
    if has_tokenizer(model_dir):
        return model_dir
    shutil.rmtree(staged, ignore_errors=True)
    os.makedirs(staged)
    for name in os.listdir(model_dir):
        os.symlink(os.path.abspath(os.path.join(model_dir, name)), os.path.join(staged, name))
    write_wordlevel_tokenizer(staged, model_geometry(model_dir).vocab_size)
    return staged


def has_tokenizer(model_dir: str) -> bool:
    return any(os.path.exists(os.path.join(model_dir, f)) for f in _TOKENIZER_FILES)


def add_tokenizer(model_dir: str) -> None:
    """Give a directory without a tokenizer a WordLevel one (one token per id), in place."""
    if not has_tokenizer(model_dir):
        write_wordlevel_tokenizer(model_dir, model_geometry(model_dir).vocab_size)


def write_wordlevel_tokenizer(directory: str, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
