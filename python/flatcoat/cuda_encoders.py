"""Encoders on CUDA: provider lists, IO binding, and pooling on the device.

- :func:`cuda_providers` builds the provider list for
  ``Encoder.from_pretrained(..., providers=...)`` (the provider checks and the
  onnxruntime/onnxruntime-gpu trap live where sessions are made:
  ``flatcoat.encoders.check_providers``).
- :func:`run_on_device` runs a session with IO binding: inputs bound from host
  memory, the output left in a device OrtValue; :func:`ortvalue_to_cupy` and
  :class:`DeviceArray` hand it over zero-copy (CuPy, or anything that reads
  ``__cuda_array_interface__``).
- :func:`encode_on_device` runs an :class:`flatcoat.Encoder` whose session is
  on CUDA through the encoder's own batching and pooling (``Encoder.batches``,
  ``Encoder.pool`` with ``xp=cupy``), so query embeddings go into a GPU index
  without a host copy.

This module imports ``flatcoat.encoders``, never the reverse.

>>> cuda_providers(1)
[('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider']
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ._onnx import CPU, CUDA
from ._validate import as_int
from .encoders import Encoder

__all__ = ["cuda_providers", "run_on_device", "ortvalue_to_cupy", "DeviceArray", "encode_on_device", "to_numpy"]


def cuda_providers(device_id: int = 0, **options: Any) -> List[Any]:
    """``[("CUDAExecutionProvider", {"device_id": N, ...}), "CPUExecutionProvider"]``."""
    return [(CUDA, {"device_id": as_int(device_id, "device_id", 0), **options}), CPU]


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


# ---------------------------------------------------------------------- encoding on the device

def encode_on_device(encoder: Encoder, texts: Sequence[str], side: str = "query", instruction: Optional[str] = None,
                     batch_size: int = 32):
    """Encodes texts with an Encoder whose session runs on CUDA, keeping the result on the GPU.

    Dense: a CuPy (n, dim) float32 array. Multivector: ``(tokens, lengths)``,
    tokens a CuPy (total, dim) array packed in text order and lengths a numpy
    int64 array: the tuple form MultiVectorIndex / CudaMaxSimStore searches take.
    The model output never goes through host memory (IO binding).
    """
    import cupy as cp

    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be a flatcoat.Encoder, got {type(encoder).__name__}")
    device = encoder.device
    if device == "cpu":
        raise ValueError(
            f"encoder runs on {list(encoder.providers)}; load it on CUDA: "
            "Encoder.from_pretrained(..., providers=flatcoat.cuda_encoders.cuda_providers())"
        )
    ordinal = int(device.split(":")[1])
    with cp.cuda.Device(ordinal):
        parts = []
        for batch in encoder.batches(texts, side, instruction=instruction, batch_size=batch_size):
            value = run_on_device(encoder.session, batch.feeds, encoder.output_name, ordinal)
            parts.append((batch.positions, encoder.pool(ortvalue_to_cupy(value, cp), batch, xp=cp)))
        n = sum(len(pos) for pos, _ in parts)
        if encoder.kind == "dense":
            out = cp.empty((n, encoder.dim), dtype=cp.float32)
            for pos, vecs in parts:
                out[cp.asarray(pos)] = vecs
            return out
        # Batches are length-sorted: gather the rows back into text order in one take.
        lengths = np.zeros(n, dtype=np.int64)
        start_in_packed = np.zeros(n, dtype=np.int64)
        base = 0
        for pos, (_, counts) in parts:
            lengths[pos] = counts
            start_in_packed[pos] = base + np.concatenate(([0], np.cumsum(counts)[:-1]))
            base += int(counts.sum())
        packed = cp.concatenate([rows for _, (rows, _) in parts])
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(start_in_packed - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
        return cp.ascontiguousarray(packed[cp.asarray(index)]), lengths
