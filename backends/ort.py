"""The ONNX Runtime backend: lower the IR to ONNX and run it in an InferenceSession.

``lower(graph, device, params=None, *, ort_optimizations=None, fused_kernels=True)``
returns an :class:`OrtRunner`. The graph's constants become ONNX initializers (``params``
is not needed: ORT keeps its own copy of the weights). The backend is inference only.

Options:
    ort_optimizations: run ONNX Runtime's own graph optimizations (``ORT_ENABLE_ALL``) or
        not (``ORT_DISABLE_ALL``), so that parity tests check tgraph's fusions without ORT's
        hiding a bug. ``None`` (the default, and the case inside ``tgraph.compile``) reads
        the environment variable ``TGRAPH_ORT_OPT``: ``0`` turns them off, anything else or
        unset leaves them on.
    fused_kernels: lower fused ops to ORT contrib / fused kernels (see ``onnx_ops/``);
        False lowers them to elementary ops.

Threads: ``intra_op_num_threads`` is the number of physical cores this process may use
(``psutil`` when installed, else the CPU affinity mask, else ``os.cpu_count()``), or
torch's thread count when that is lower (``torch.set_num_threads(1)`` holds for both).

Devices: ``device="cuda"`` needs onnxruntime-gpu (the CUDAExecutionProvider); inputs and
outputs then stay on the GPU through IO binding, with no host round trip.

Weights: arrays of at least 4 KB stay out of the ONNX proto and reach the session without
a protobuf copy (backends/ort_load.py). On CPU with graph optimizations on, a linear's
weight is read by ``com.microsoft.FusedMatMul(transB=1)``, which MLAS prepacks at load
straight from the graph's (out, in) array, shared with the session. What ORT reads after
load and what it copies is probed once per process (``ort_load.reads_after_load``), not
assumed; ``OrtRunner.load_only`` names the arrays it is done with after load.

Models whose initializers pass :data:`EXTERNAL_DATA_BYTES` are written to a temporary
directory with external data (a ModelProto cannot be serialized past 2 GB).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from tgraph.ir import Graph, SymDim, evaluate
from tgraph.tensors import torch_dtype

from .errors import LoweringError
from .onnx_model import to_onnx
from .ort_load import open_session, reads_after_load
from .policy import ORT_OPTIMIZERS_OFF

__all__ = ["EXTERNAL_DATA_BYTES", "LoweringError", "OrtRunner", "lower", "save_files", "to_onnx"]

ENV_OPTIMIZATIONS = "TGRAPH_ORT_OPT"
EXTERNAL_DATA_BYTES = 1_500_000_000


def physical_cores() -> int:
    """Physical cores available to this process (at least 1)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(available, physical))


def _optimizations_on(option: bool | None) -> bool:
    if option is not None:
        return option
    return os.environ.get(ENV_OPTIMIZATIONS, "1").strip() != "0"


def _providers(device: str) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise ValueError(f"unknown device {device!r}; the ort backend runs on 'cpu' or 'cuda'")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            "device='cuda' needs onnxruntime-gpu with CUDAExecutionProvider; "
            f"available: {', '.join(available)}"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' needs a CUDA GPU visible to torch (inputs are CUDA tensors)"
        )
    index = torch.cuda.current_device()
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def _session(
    model: onnx.ModelProto,
    options: ort.SessionOptions,
    providers: list,
    weights: dict[str, np.ndarray] | None = None,
    disabled_optimizers: Sequence[str] = (),
    shared: set[str] = frozenset(),
):
    """An InferenceSession; big models go through a temporary directory with external data.

    ``weights`` are the initializers that ``to_onnx(external=...)`` kept out of the proto:
    they are never serialized (``ort_load.open_session``; those in ``shared`` are shared,
    the rest external). ``disabled_optimizers`` names ONNX Runtime graph optimizers to skip.
    Returns the session and what to keep alive with it: (OrtValues by name, the arrays,
    the placeholder's directory or None), or the temporary directory, or None.
    """
    extra = {"disabled_optimizers": list(disabled_optimizers)}
    if weights:
        session, values, tmp = open_session(model, options, providers, weights, shared, **extra)
        return session, (values, weights, tmp)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size <= EXTERNAL_DATA_BYTES:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=providers, **extra
        )
        return session, None
    tmp = tempfile.TemporaryDirectory(prefix="tgraph-ort-")
    path = os.path.join(tmp.name, "model.onnx")
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    return ort.InferenceSession(path, options, providers=providers, **extra), tmp


def refuse_sharded(graph: Graph) -> None:
    """ORT runs one process: a tensor-parallel graph needs torch.distributed."""
    from tgraph.ir.ops.collective import COMBINE

    node = next((n for n in graph.nodes if n.op in COMBINE), None)
    if node is not None:
        raise LoweringError(
            f"graph {graph.name} is sharded ({node.op} at %{node.name}): the ort backend runs "
            "one process; compile it with backend='torch' and launch it with torchrun"
        )


def lower(
    graph: Graph,
    device: str = "cpu",
    params=None,
    *,
    ort_optimizations: bool | None = None,
    fused_kernels: bool = True,
    edit: Callable[[onnx.ModelProto], None] | None = None,
) -> OrtRunner:
    """Lower ``graph`` to ONNX and open an ONNX Runtime session for it (options: see above).

    ``edit`` may add to the ONNX model before the session opens (the generation step adds
    its greedy token output, backends/ort_cache.py); it must leave the graph's own inputs
    and outputs first and as they are."""
    refuse_sharded(graph)
    providers = _providers(device)  # fail fast, before lowering
    weights: dict[str, np.ndarray] = {}
    load_only: set[str] = set()
    prepacked: set[str] = set()
    optimize = _optimizations_on(ort_optimizations)
    cpu = device == "cpu"
    in_place = not cpu or reads_after_load("Gather")  # else ORT copies what it is given
    prepack = cpu and optimize and not reads_after_load("FusedMatMul")
    share = prepack and not reads_after_load("FusedMatMul", shared=True)
    model = to_onnx(graph, fused_kernels=fused_kernels, external=weights, fold_at_load=optimize,
                    device=device, load_only=load_only, prepack=prepack, in_place=in_place,
                    prepacked=prepacked)  # fmt: skip
    if edit is not None:
        edit(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(physical_cores(), torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    off = ORT_OPTIMIZERS_OFF.get(device, ()) if optimize else ()
    session, tmp = _session(model, options, providers, weights, off, prepacked if share else set())
    del model  # only the session's own copies from here on
    options_used = {"ort_optimizations": ort_optimizations, "fused_kernels": fused_kernels}
    runner = OrtRunner(graph, session, device, options_used, tmp)
    runner.load_only = load_only if weights else set()
    return runner


class OrtRunner:
    """Runs the lowered graph: torch tensors in (graph-input order), torch tensors out."""

    def __init__(
        self,
        graph: Graph,
        session: ort.InferenceSession,
        device: str,
        options: dict | None = None,
        tmp: object = None,
    ):
        self.graph = graph
        self.session = session
        self.device = device
        self.options = dict(options or {})  # lower()'s keyword options, to re-lower on unpickle
        self._tmp = tmp  # keeps external weights (files or arrays) alive as long as the session
        self.load_only: set[str] = set()  # external arrays ORT only read while loading
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def external_arrays(self) -> dict[str, np.ndarray]:
        """The arrays handed to ONNX Runtime without a protobuf copy (``ort_load``), by
        name: those not in :attr:`load_only` it reads in place while it runs."""
        return self._tmp[1] if isinstance(self._tmp, tuple) else {}

    def release_load_only(self) -> None:
        """Drop this runner's references to the arrays ONNX Runtime only read at load (the
        weights it copied, folded or prepacked into its own memory): the session never
        reads them again (tests/test_generation_memory.py and test_ort_load.py overwrite
        them to check)."""
        if not isinstance(self._tmp, tuple) or not self.load_only:
            return
        values, weights, tmp = self._tmp
        keep = [name for name in weights if name not in self.load_only]
        self._tmp = ({n: values[n] for n in keep}, {n: weights[n] for n in keep}, tmp)

    def __reduce__(self):
        # A session does not pickle: unpickling lowers the graph again.
        return (_relower, (self.graph, self.device, self.options))

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check_inference(inputs)
        if self.device == "cuda":
            return self._run_cuda(inputs)
        feeds = {name: _to_numpy(t) for name, t in zip(self.input_names, inputs)}
        return [torch.from_numpy(a) for a in self.session.run(self.output_names, feeds)]

    def _check_inference(self, inputs: Sequence[torch.Tensor]) -> None:
        if not torch.is_grad_enabled():
            return
        for v, t in zip(self.graph.inputs, inputs):
            if t.requires_grad:
                raise RuntimeError(
                    f"the ort backend is inference-only, but input {v.name!r} requires grad; "
                    "use backend='torch' for training, or call under torch.no_grad()"
                )

    def _run_cuda(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        device = torch.device("cuda", torch.cuda.current_device())
        inputs = [t.detach().to(device).contiguous() for t in inputs]
        bindings = _symbol_values(self.graph, inputs)
        binding = self.session.io_binding()
        for name, t in zip(self.input_names, inputs):
            binding.bind_input(
                name, "cuda", device.index, _np_dtype(t.dtype), list(t.shape), t.data_ptr()
            )
        outputs = []
        for name, v in zip(self.output_names, self.graph.outputs):
            shape = [evaluate(d, bindings) for d in v.shape]
            out = torch.empty(shape, dtype=torch_dtype(v.dtype), device=device)
            binding.bind_output(
                name, "cuda", device.index, _np_dtype(out.dtype), shape, out.data_ptr()
            )
            outputs.append(out)
        torch.cuda.current_stream(device).synchronize()  # inputs written by torch are ready
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs


def _relower(graph: Graph, device: str, options: dict) -> OrtRunner:
    return lower(graph, device, **options)


def _symbol_values(graph: Graph, inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    values: dict[str, int] = {}
    for v, t in zip(graph.inputs, inputs):
        for d, n in zip(v.shape, t.shape):
            if isinstance(d, SymDim) and d.is_symbol():
                values.setdefault(d.name, int(n))
    return values


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (a copy only when it is not contiguous or not on CPU)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        raise TypeError("the ort backend takes no bfloat16 inputs on cpu; cast them to float32")
    a = t.numpy()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def save_files(graph: Graph, directory: str, device: str = "cpu") -> None:
    """Write the lowered ONNX model beside an artifact (``model.onnx``), for inspection
    and for running it with ONNX Runtime directly on ``device``; big weights go to
    external data."""
    model = to_onnx(graph, device=device)
    path = os.path.join(directory, "model.onnx")
    large = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save_model(model, path, save_as_external_data=large, location="model.onnx.data")
