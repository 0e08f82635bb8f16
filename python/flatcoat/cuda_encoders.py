"""Encoders on CUDA: provider checks, the onnxruntime/onnxruntime-gpu trap, and IO binding.

- :func:`check_providers` validates an execution-provider list against what
  onnxruntime offers and explains a missing CUDA provider, including the known
  trap of ``onnxruntime`` and ``onnxruntime-gpu`` installed together (both
  write the same ``onnxruntime`` package; the CPU wheel silently hides CUDA).
  It and :func:`onnxruntime_conflict` are pure functions of the names given,
  so they are tested everywhere with fake metadata.
- :func:`run_on_device` runs a session with IO binding: inputs bound from host
  memory, the output left in a device OrtValue; :func:`ortvalue_to_cupy` and
  :class:`DeviceArray` hand it over zero-copy (CuPy, or anything that reads
  ``__cuda_array_interface__``).
- :func:`encode_on_device` runs an :class:`flatcoat.Encoder` whose session is
  on CUDA and pools on the device, so query embeddings go into a GPU index
  (``flatcoat.cuda`` / ``flatcoat.cuda_maxsim``) without a host copy.

>>> onnxruntime_conflict(["onnxruntime", "onnxruntime-gpu", "numpy"]) is not None
True
>>> onnxruntime_conflict(["onnxruntime-gpu"]) is None
True
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "ONNXRUNTIME_FIX", "OnnxRuntimeConflictWarning", "installed_distributions", "onnxruntime_distributions",
    "onnxruntime_conflict", "check_providers", "cuda_providers", "session_device", "run_on_device",
    "ortvalue_to_cupy", "DeviceArray", "encode_on_device", "to_numpy",
]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: The fix for two onnxruntime wheels installed side by side.
ONNXRUNTIME_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
# Wheels that install the same top-level `onnxruntime` package.
_ORT_CPU = ("onnxruntime", "ort-nightly", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-silicon")
_ORT_GPU = ("onnxruntime-gpu", "ort-nightly-gpu")
_ORT_ALL = _ORT_CPU + _ORT_GPU + ("onnxruntime-training",)


class OnnxRuntimeConflictWarning(UserWarning):
    """Two onnxruntime distributions share one package directory; CUDA may be hidden."""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def installed_distributions() -> List[str]:
    """Names of the installed distributions (importlib.metadata), normalized."""
    from importlib import metadata

    names = []
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") if dist.metadata is not None else None
        if name:
            names.append(_normalize(name))
    return names


def onnxruntime_distributions(names: Optional[Iterable[str]] = None) -> List[str]:
    """The onnxruntime wheels among ``names`` (default: what is installed), sorted."""
    names = installed_distributions() if names is None else [_normalize(n) for n in names]
    return sorted({n for n in names if n in _ORT_ALL})


def onnxruntime_conflict(names: Optional[Iterable[str]] = None) -> Optional[str]:
    """A message when a GPU onnxruntime wheel is installed next to another one, else None."""
    found = onnxruntime_distributions(names)
    gpu = [n for n in found if n in _ORT_GPU]
    if gpu and len(found) > 1:
        return (
            f"onnxruntime wheels {', '.join(found)} are installed together: they share one 'onnxruntime' package, "
            f"and the CPU wheel's files silently hide the CUDA provider of {gpu[0]}. Keep only the GPU one: "
            f"{ONNXRUNTIME_FIX}"
        )
    return None


def check_providers(providers: Any, available: Sequence[str], installed: Optional[Iterable[str]] = None,
                    *, warn: bool = True) -> List[Any]:
    """Validates ``providers`` (names or ``(name, options)`` tuples) against ``available``.

    Returns them as a list (default ``["CPUExecutionProvider"]``). Raises
    ValueError naming the fix when one is not available: for CUDA, the
    onnxruntime/onnxruntime-gpu trap, a CPU-only wheel, or a GPU wheel that
    cannot load CUDA. With CUDA available but two wheels installed, warns
    (OnnxRuntimeConflictWarning) when ``warn``.

    >>> check_providers(None, ["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    if providers is None:
        providers = [CPU]
    if isinstance(providers, str):
        providers = [providers]
    providers = list(providers)
    available = list(available)
    names = []
    for p in providers:
        name = p[0] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], dict) else p
        if not isinstance(name, str):
            raise TypeError(f"providers must be provider names or (name, options) tuples, got {p!r}")
        names.append(name)
    conflict = onnxruntime_conflict(installed) if CUDA in names else None
    for name in names:
        if name in available:
            continue
        message = f"execution provider {name!r} is not available in this onnxruntime; available: {available}"
        if name == CUDA:
            found = onnxruntime_distributions(installed)
            if conflict is not None:
                message += f". {conflict}"
            elif not any(n in _ORT_GPU for n in found):
                message += f". Install the GPU wheel: {ONNXRUNTIME_FIX}"
            else:
                message += (". onnxruntime-gpu is installed but could not load CUDA: check that the CUDA and cuDNN "
                            "libraries of its version are installed (pip install onnxruntime-gpu[cuda,cudnn]) and "
                            "that nvidia-smi sees a GPU")
        raise ValueError(message)
    if conflict is not None and warn:
        warnings.warn(conflict, OnnxRuntimeConflictWarning, stacklevel=2)
    return providers


def cuda_providers(device_id: int = 0, **options: Any) -> List[Any]:
    """``[("CUDAExecutionProvider", {"device_id": N, ...}), "CPUExecutionProvider"]``."""
    if isinstance(device_id, bool) or not isinstance(device_id, (int, np.integer)) or device_id < 0:
        raise ValueError(f"device_id must be a non-negative integer, got {device_id!r}")
    return [(CUDA, {"device_id": int(device_id), **options}), CPU]


def session_device(session) -> Optional[int]:
    """The CUDA ordinal a session runs on, or None when CUDA is not its first provider."""
    providers = list(session.get_providers())
    if not providers or providers[0] != CUDA:
        return None
    options = session.get_provider_options().get(CUDA, {})
    return int(options.get("device_id", 0))


# ---------------------------------------------------------------------- IO binding

def run_on_device(session, feeds: dict, output: str, device_id: int = 0):
    """Runs ``session`` with IO binding: ``feeds`` (numpy) bound from host memory,
    ``output`` left in GPU memory. Returns the output OrtValue (keep it alive
    while views of it are used)."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output(output, "cuda", int(device_id))
    session.run_with_iobinding(binding)
    return binding.get_outputs()[0]


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class DeviceArray:
    """A device buffer owned by ``owner`` (e.g. an OrtValue), exposed through
    ``__cuda_array_interface__`` (CuPy, torch, numba read it without copying)."""

    def __init__(self, ptr: int, shape: Tuple[int, ...], dtype, owner: Any, device_id: int = 0):
        self.ptr, self.shape, self.dtype = int(ptr), tuple(int(s) for s in shape), np.dtype(dtype)
        self.owner, self.device_id = owner, int(device_id)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": None}  # ORT finished: run_with_iobinding synchronises

    @classmethod
    def from_ortvalue(cls, value) -> "DeviceArray":
        if value.device_name().lower() != "cuda":
            raise ValueError(f"the OrtValue lives on {value.device_name()!r}, not on a CUDA device")
        dtype = _ORT_DTYPES.get(value.data_type())
        if dtype is None:
            raise TypeError(f"unsupported OrtValue type {value.data_type()}")
        return cls(value.data_ptr(), tuple(value.shape()), dtype, value)


def ortvalue_to_cupy(value, cp=None):
    """A CuPy view of a CUDA OrtValue's memory (zero-copy; the view keeps the OrtValue alive)."""
    if cp is None:
        import cupy as cp
    dev = DeviceArray.from_ortvalue(value)
    nbytes = int(np.prod(dev.shape, dtype=np.int64)) * dev.dtype.itemsize
    memory = cp.cuda.UnownedMemory(dev.ptr, nbytes, dev)
    return cp.ndarray(dev.shape, dtype=dev.dtype, memptr=cp.cuda.MemoryPointer(memory, 0))


def to_numpy(x) -> np.ndarray:
    """numpy for numpy, CuPy or torch arrays (one device-to-host copy for device arrays)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------- pooling on the device

def _pool_device(encoder, hidden, mask, cp):
    """Encoder._pool on the device (CuPy), same steps."""
    hidden = hidden.astype(cp.float32, copy=False)
    if hidden.ndim == 2:
        vecs = hidden
    else:
        m = mask.astype(cp.float32)
        pooling = encoder.config.pooling
        if pooling == "cls":
            vecs = hidden[:, 0]
        elif pooling == "last-token":
            last = mask.sum(axis=1) - 1
            vecs = hidden[cp.arange(hidden.shape[0]), last]
        else:
            if pooling == "weighted-mean":
                m = m * cp.arange(1, m.shape[1] + 1, dtype=cp.float32)
            summed = cp.matmul(m[:, None, :], hidden)[:, 0]
            vecs = summed / cp.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    if encoder._projection is not None:
        vecs = vecs @ cp.asarray(encoder._projection)
    if encoder.config.normalize:
        vecs = vecs / cp.maximum(cp.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return cp.ascontiguousarray(vecs, dtype=cp.float32)


def _tokens_device(encoder, hidden, ids, keep, side, cp):
    """Encoder._tokens on the device: the kept token rows packed, and their counts per text."""
    hidden = hidden.astype(cp.float32, copy=False)
    if encoder._projection is not None:
        hidden = hidden @ cp.asarray(encoder._projection)
    if encoder.config.normalize:
        hidden = hidden / cp.maximum(cp.linalg.norm(hidden, axis=2, keepdims=True), 1e-12)
    if side == "document" and encoder._skip_ids is not None:
        keep = keep & ~np.isin(ids, encoder._skip_ids)
    keep_d = cp.asarray(keep)
    return hidden[keep_d], keep.sum(axis=1).astype(np.int64)


def encode_on_device(encoder, texts: Sequence[str], side: str = "query", instruction: Optional[str] = None,
                     batch_size: int = 32):
    """Encodes texts with an Encoder whose session runs on CUDA, keeping the result on the GPU.

    Dense: a CuPy (n, dim) float32 array. Multivector: ``(tokens, lengths)``,
    tokens a CuPy (total, dim) array packed in text order and lengths a numpy
    int64 array: the tuple form MultiVectorIndex / CudaMaxSimStore searches take.
    The model output never goes through host memory (IO binding).
    """
    import cupy as cp

    from .encoders import _check_batch_size, _check_texts

    device = session_device(encoder.session)
    if device is None:
        raise ValueError(
            f"the encoder runs on {list(encoder.session.get_providers())}; load it on CUDA: "
            "Encoder.from_pretrained(..., providers=flatcoat.cuda_encoders.cuda_providers())"
        )
    if side not in ("query", "document"):
        raise ValueError(f"side must be 'query' or 'document', got {side!r}")
    items = _check_texts(texts)
    batch_size = _check_batch_size(batch_size)
    if side == "query":
        items = [encoder.format_query(t, instruction) for t in items]
    elif encoder.config.document_prefix:
        items = [encoder.config.document_prefix + t for t in items]
    tok = encoder._tok_query if side == "query" else encoder._tok_doc
    encodings = tok.encode_batch(items)
    dense = encoder.kind == "dense"
    with cp.cuda.Device(device):
        out = cp.empty((len(items), encoder.dim), dtype=cp.float32) if dense else None
        parts, lengths, where = [], np.zeros(len(items), dtype=np.int64), []
        for pos, ids, mask, keep in encoder._batches(encodings, side, batch_size):
            feeds = {"input_ids": ids}
            if "attention_mask" in encoder._input_names:
                feeds["attention_mask"] = mask
            if "token_type_ids" in encoder._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            if "position_ids" in encoder._input_names:
                feeds["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
            value = run_on_device(encoder.session, feeds, encoder._output, device)
            hidden = ortvalue_to_cupy(value, cp)
            if dense:
                out[cp.asarray(pos)] = _pool_device(encoder, hidden, cp.asarray(mask), cp)
            else:
                rows, counts = _tokens_device(encoder, hidden, ids, keep, side, cp)
                parts.append(rows)
                lengths[pos] = counts
                where.append((pos, counts))
        if dense:
            return out
        # Batches are length-sorted: gather the rows back into text order in one take.
        packed = cp.concatenate(parts)
        start_in_packed = np.zeros(len(items), dtype=np.int64)
        base = 0
        for pos, counts in where:
            start_in_packed[pos] = base + np.concatenate(([0], np.cumsum(counts)[:-1]))
            base += int(counts.sum())
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(start_in_packed - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
        return cp.ascontiguousarray(packed[cp.asarray(index)]), lengths
