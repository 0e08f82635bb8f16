"""GPU search with flatcoat's CUDA kernels.

The kernels live in the optional extension ``flatcoat._cuda``, built only when
a CUDA toolkit is present (``FLATCOAT_CUDA=ON pip install .``, see
docs/gpu.md) and imported here on first use, so a CPU-only install never loads
it. Queries may be numpy arrays (results come back as numpy) or device arrays:
CuPy, PyTorch CUDA tensors or anything with ``__cuda_array_interface__`` or a
CUDA ``__dlpack__`` (used in place, zero-copy; results come back as CuPy, or as
torch tensors for torch input). Device input needs CuPy to allocate results.

>>> import flatcoat.cuda
>>> flatcoat.cuda.available() in (True, False)
True
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Optional, Tuple

import numpy as np

from ._validate import as_float_matrix, as_ids, as_k, normalize_rows

__all__ = [
    "CudaUnavailableError", "available", "device_count", "unavailable_reason", "require", "parse_device",
    "CudaDenseStore", "DenseMirror", "mirror_for", "topk", "MAX_K",
]

#: The largest k (and rescore depth) the GPU search and top-k accept.
MAX_K = 4096

_BUILD_HINT = (
    "to search on a GPU, reinstall flatcoat from source with a CUDA toolkit (nvcc) available: "
    "FLATCOAT_CUDA=ON pip install --no-build-isolation . (see docs/gpu.md)"
)
_METRICS = ("ip", "cosine", "l2")
_STORAGES = ("f32", "f16", "int8", "binary")
_UPLOAD_CHUNK_BYTES = 64 << 20  # host rows gathered per upload step (bounds the extra host memory)


class CudaUnavailableError(RuntimeError):
    """flatcoat's CUDA support cannot be used here; the message says why and what to do."""


# ---------------------------------------------------------------------- the extension, loaded lazily

_state_lock = threading.Lock()
_extension_state: Optional[tuple] = None  # (module or None, import error or None)


def _import_extension():
    """Imports flatcoat._cuda (a seam for tests, which replace it)."""
    return importlib.import_module("flatcoat._cuda")


def _extension():
    global _extension_state
    with _state_lock:
        if _extension_state is None:
            try:
                _extension_state = (_import_extension(), None)
            except ImportError as exc:
                _extension_state = (None, exc)
        return _extension_state


def _reset() -> None:
    """Forgets the import attempt (tests)."""
    global _extension_state
    with _state_lock:
        _extension_state = None


def unavailable_reason(device: int = 0) -> Optional[str]:
    """Why GPU search cannot run on ``cuda:device``, or None when it can."""
    module, error = _extension()
    if module is None:
        return f"flatcoat was built without its CUDA extension (importing flatcoat._cuda failed: {error}); {_BUILD_HINT}"
    n = int(module.device_count())
    if n == 0:
        status = module.device_status()
        if int(module.driver_version()) == 0:
            status = f"no NVIDIA driver was found ({status})"
        return (
            f"flatcoat._cuda is built, but no CUDA device is visible: {status}; "
            "check nvidia-smi, the NVIDIA driver and CUDA_VISIBLE_DEVICES"
        )
    if not 0 <= device < n:
        return f"there is no CUDA device cuda:{device} ({n} visible: cuda:0 .. cuda:{n - 1})"
    return None


def available() -> bool:
    """True when the CUDA extension is built and at least one GPU is visible."""
    return unavailable_reason(0) is None


def device_count() -> int:
    """Visible CUDA devices (0 without the extension, a driver or a GPU)."""
    module, _ = _extension()
    return 0 if module is None else int(module.device_count())


def require(device: int = 0):
    """Returns the extension module, or raises CudaUnavailableError saying why it cannot be used."""
    reason = unavailable_reason(device)
    if reason is not None:
        raise CudaUnavailableError(reason)
    return _extension()[0]


def parse_device(device) -> Optional[int]:
    """``"cpu"`` -> None; ``"cuda"`` -> 0; ``"cuda:N"`` -> N."""
    if isinstance(device, str):
        if device == "cpu":
            return None
        if device == "cuda":
            return 0
        if device.startswith("cuda:") and device[5:].isdigit():
            return int(device[5:])
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


# ---------------------------------------------------------------------- arrays: host or device

def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise CudaUnavailableError(
            f"device arrays need CuPy to hold the results ({exc}); pip install cupy-cuda12x or cupy-cuda13x "
            "(matching your driver), or pass numpy arrays"
        ) from None
    return cupy


def _on_device(x) -> bool:
    """Whether x lives in GPU memory (CUDA array interface, or a DLPack CUDA device)."""
    if isinstance(x, np.ndarray):
        return False
    try:
        if getattr(x, "__cuda_array_interface__", None) is not None:
            return True
    except (AttributeError, RuntimeError, TypeError):  # e.g. a CPU torch tensor refuses the attribute
        return False
    probe = getattr(x, "__dlpack_device__", None)
    if probe is None:
        return False
    try:
        device_type = int(probe()[0])
    except Exception:  # noqa: BLE001 - an object that cannot say is not a GPU array
        return False
    return device_type in (2, 13)  # kDLCUDA, kDLCUDAManaged


def _stream_of(x, cp) -> int:
    """The stream to run on: the producer's, per the CUDA array interface, else CuPy's current one."""
    try:
        iface = x.__cuda_array_interface__
    except (AttributeError, RuntimeError, TypeError):
        iface = None
    if iface is not None and iface.get("stream") is not None:
        stream = int(iface["stream"])
        return 0 if stream == 1 else stream  # 1: the legacy default stream; 2 (per-thread) passes through
    if type(x).__module__.split(".")[0] == "torch":
        torch = sys.modules["torch"]
        return int(torch.cuda.current_stream(x.device).cuda_stream)
    return int(cp.cuda.get_current_stream().ptr)


def _as_cupy(x, cp):
    if isinstance(x, cp.ndarray):
        return x
    try:
        if getattr(x, "__cuda_array_interface__", None) is not None:
            return cp.asarray(x)  # zero-copy
    except (AttributeError, RuntimeError, TypeError):
        pass
    return cp.from_dlpack(x)


def _device_matrix(x, name: str, dim: int, device: int, cp):
    """A C-contiguous float32 (n, dim) CuPy view of a device array (copying only to convert)."""
    a = _as_cupy(x, cp)
    if a.device.id != device:
        raise ValueError(
            f"{name}: the array is on cuda:{a.device.id} but the index is on cuda:{device}; move it there first"
        )
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: dtype {a.dtype} is not a floating type; pass float32 (e.g. {name}.astype('float32'))")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    elif a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array of shape (n, {dim}) or one vector of shape ({dim},), got {a.ndim}-d")
    if a.shape[1] != dim:
        raise ValueError(f"{name}: expected dimension {dim}, got {a.shape[1]}")
    with cp.cuda.Device(device):
        return cp.ascontiguousarray(a, dtype=cp.float32)


def _address(a) -> int:
    if isinstance(a, np.ndarray):
        return int(a.__array_interface__["data"][0])
    data = getattr(a, "data", None)
    if hasattr(data, "ptr"):  # CuPy
        return int(data.ptr)
    return int(a.__cuda_array_interface__["data"][0])


def _check_out(out, shape, device_kind: bool, cp):
    """Validates caller-provided outputs: (scores float32, ids int64) of `shape`, C-contiguous, of the input's kind."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("out: expected a tuple (scores, ids)")
    checked = []
    for a, dtype, name in ((out[0], np.float32, "scores"), (out[1], np.int64, "ids")):
        if device_kind:
            if not _on_device(a):
                raise TypeError(f"out: {name} must be a device array for device queries")
            a = _as_cupy(a, cp)
            contiguous = a.flags.c_contiguous
        else:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"out: {name} must be a numpy array for host queries")
            contiguous = a.flags.c_contiguous and a.flags.writeable
        if a.dtype != np.dtype(dtype) or tuple(a.shape) != tuple(shape) or not contiguous:
            raise ValueError(f"out: {name} must be a writable C-contiguous {np.dtype(dtype)} array of shape {shape}")
        checked.append(a)
    return checked


def _as_input_kind(x, arrays):
    """Device results as the framework of the input: torch for torch, CuPy otherwise."""
    if type(x).__module__.split(".")[0] == "torch":
        torch = sys.modules["torch"]
        return tuple(torch.from_dlpack(a) for a in arrays)
    return tuple(arrays)


# ---------------------------------------------------------------------- dense search

class CudaDenseStore:
    """A dense index's arrays in GPU memory, searched by flatcoat's CUDA kernels.

    Same results as :class:`flatcoat.DenseIndex` for the same arrays: top-k
    best first, ties by the smaller id, padded with id -1 and -inf (+inf for
    l2). The arrays are those of a DenseIndex (see ``from_index``): ``codes``
    (f32: float32 (n, dim); f16: uint16 or float16 (n, dim); int8: uint8
    (n, dim) with ``scale`` and ``offset``; binary: uint64 (n, ceil(dim / 64))),
    ``ids`` int64 (n,), ``sq_norms`` for l2, and ``float_rows`` /
    ``float_sq_norms`` for rescoring. They may be numpy or CuPy arrays; they
    are copied to the device (in ascending id order, which is how the kernels
    break ties) and not referenced afterwards.
    """

    def __init__(self, dim: int, metric: str = "ip", storage: str = "f32", *, codes, ids, sq_norms=None,
                 scale=None, offset=None, float_rows=None, float_sq_norms=None, device: int = 0):
        if metric not in _METRICS:
            raise ValueError(f"metric: expected one of {_METRICS}, got {metric!r}")
        if storage not in _STORAGES:
            raise ValueError(f"storage: expected one of {_STORAGES}, got {storage!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        ext = require(device)
        self._dim, self._metric, self._storage, self._device = int(dim), metric, storage, int(device)
        if metric == "l2" and storage != "binary" and sq_norms is None:
            raise ValueError("sq_norms: l2 search needs the squared norms of the stored (decoded) rows")
        if storage == "int8" and (scale is None or offset is None) and len(ids) > 0:
            raise ValueError("scale, offset: int8 storage needs the rows' scales and offsets")
        if float_rows is None and float_sq_norms is not None:
            raise ValueError("float_sq_norms given without float_rows")
        self._keep_float = float_rows is not None
        if metric == "l2" and self._keep_float and float_sq_norms is None:
            raise ValueError("float_sq_norms: l2 rescoring needs the float rows' squared norms")

        on_device = _on_device(ids)
        xp = _cupy() if on_device else np
        ids = _as_cupy(ids, xp) if on_device else as_ids(ids, "ids", len(ids))
        n = int(ids.shape[0])
        if on_device and (ids.dtype != np.int64 or ids.ndim != 1):
            raise TypeError("ids: expected a 1-d int64 array")
        words = (self._dim + 63) // 64
        row_shape = {"f32": (self._dim,), "f16": (self._dim,), "int8": (self._dim,), "binary": (words,)}[storage]
        row_dtype = {"f32": np.float32, "f16": np.uint16, "int8": np.uint8, "binary": np.uint64}[storage]
        if storage == "f16" and getattr(codes, "dtype", None) == np.float16:
            codes = codes.view(xp.uint16)
        fields = {"codes": (codes, row_shape, row_dtype), "ids": (ids, (), np.int64)}
        if sq_norms is not None:
            fields["sq_norms"] = (sq_norms, (), np.float32)
        if storage == "int8":
            fields["scale"] = (scale, (), np.float32)
            fields["offset"] = (offset, (), np.float32)
        if float_rows is not None:
            fields["float_rows"] = (float_rows, (self._dim,), np.float32)
        if float_sq_norms is not None:
            fields["float_sq_norms"] = (float_sq_norms, (), np.float32)
        for name, (a, shape, dtype) in list(fields.items()):
            if _on_device(a) != on_device:
                raise TypeError(f"{name}: all arrays must be on the same side (host or device) as ids")
            if on_device:
                a = _as_cupy(a, xp)
                fields[name] = (a, shape, dtype)
            if a.dtype != np.dtype(dtype) or tuple(a.shape) != (n,) + tuple(shape):
                raise ValueError(f"{name}: expected {np.dtype(dtype)} of shape {(n,) + tuple(shape)}, got {a.dtype} {tuple(a.shape)}")

        # The kernels break ties by the smaller row, so rows go up in ascending id order.
        order = None
        if n > 1 and not bool((ids[1:] > ids[:-1]).all()):
            order = xp.argsort(ids, kind="stable") if xp is np else xp.argsort(ids)
            sorted_ids = ids[order]
            if not bool((sorted_ids[1:] > sorted_ids[:-1]).all()):
                raise ValueError("ids: every id must be distinct")
        if on_device and n and int(ids.min()) < 0:
            raise ValueError("ids: must be non-negative")

        self._store = ext.DenseStore(self._device, storage, self._dim, n, sq_norms is not None,
                                     float_rows is not None, float_sq_norms is not None)
        context = _cupy().cuda.Device(self._device) if on_device else _NoContext()
        with context:
            for name, (a, _, _) in fields.items():
                self._upload(name, a, order, xp)
        self._rows = n

    def _upload(self, name, a, order, xp):
        n = a.shape[0]
        if n == 0:
            return
        row_bytes = max(1, a.nbytes // n)
        step = max(1, _UPLOAD_CHUNK_BYTES // row_bytes)
        for start in range(0, n, step):
            stop = min(n, start + step)
            part = a[start:stop] if order is None else a[order[start:stop]]
            part = xp.ascontiguousarray(part)  # a view when the rows are already contiguous
            pitch = part.strides[0] if part.ndim > 1 else part.itemsize
            self._store.upload(name, start, _address(part), stop - start, pitch)

    @classmethod
    def from_index(cls, index, device: int = 0) -> "CudaDenseStore":
        """Uploads a :class:`flatcoat.DenseIndex`'s arrays (hold its read lock while this runs)."""
        v = index._rows.views()
        return cls(
            index.dim, index.metric, index.storage, codes=v["codes"], ids=v["ids"], sq_norms=v.get("sq_norms"),
            scale=v.get("scale"), offset=v.get("offset"), float_rows=v.get("float_rows"),
            float_sq_norms=v.get("float_sq_norms"), device=device,
        )

    # -------------------------------------------------------------- properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def device(self) -> str:
        return f"cuda:{self._device}"

    @property
    def nbytes(self) -> int:
        """Device bytes held (codes padded to 16-byte rows, ids, norms, float copy)."""
        return int(self._store.nbytes)

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        return (f"CudaDenseStore(dim={self._dim}, metric={self._metric!r}, storage={self._storage!r}, "
                f"count={self._rows}, device={self.device!r})")

    # -------------------------------------------------------------- search

    def search(self, queries, k: int = 10, rescore: Optional[int] = None, *, half_queries: bool = False,
               path: str = "auto", out=None) -> Tuple:
        """Returns ``(scores, ids)``, both (q, k), as DenseIndex.search does.

        ``queries``: (q, dim) or (dim,); numpy (results are numpy) or a device
        array (results are CuPy, or torch for torch input; the work runs on the
        producer's stream and is finished when this returns). ``rescore=R``
        re-ranks the R best of the scan exactly against the float rows.
        ``half_queries``: batched f16/int8 searches round each query value to
        one f16 term on the tensor cores (twice as fast, about 3 decimal digits
        of the query) instead of two (float32-grade). ``path``: "auto", "scan"
        (CUDA cores) or "mma" (tensor cores; f16 and int8). ``out``: a
        ``(scores, ids)`` pair to write into, of the input's kind.
        """
        k = as_k(k)
        if k > MAX_K:
            raise ValueError(f"k: at most {MAX_K} on the GPU, got {k}")
        depth = 0
        if rescore is not None:
            depth = as_k(rescore)
            if depth < k:
                raise ValueError(f"rescore: must be at least k ({k}), got {depth}")
            if depth > MAX_K:
                raise ValueError(f"rescore: at most {MAX_K} on the GPU, got {depth}")
            if not self._keep_float:
                raise ValueError("rescore: this index keeps no float copy; build it with keep_float=True")
        if path not in ("auto", "scan", "mma"):
            raise ValueError(f"path: expected 'auto', 'scan' or 'mma', got {path!r}")
        kernel_metric = "l2" if self._metric == "l2" else "ip"
        cosine = self._metric == "cosine"

        if _on_device(queries):
            cp = _cupy()
            q = _device_matrix(queries, "queries", self._dim, self._device, cp)
            nq = q.shape[0]
            with cp.cuda.Device(self._device):
                if out is None:
                    scores, ids = cp.empty((nq, k), dtype=cp.float32), cp.empty((nq, k), dtype=cp.int64)
                else:
                    scores, ids = _check_out(out, (nq, k), True, cp)
                stream = _stream_of(queries, cp)
                # Cosine queries are normalised on the device, exactly as normalize_rows does on the host.
                self._store.search(_address(q), nq, True, k, kernel_metric, depth, cosine, bool(half_queries), path,
                                   _address(scores), _address(ids), stream)
            if out is not None:
                return out
            return _as_input_kind(queries, (scores, ids))

        q = as_float_matrix(queries, "queries", self._dim)
        if cosine:
            q = normalize_rows(q, "queries")
        nq = q.shape[0]
        if out is None:
            scores, ids = np.empty((nq, k), dtype=np.float32), np.empty((nq, k), dtype=np.int64)
        else:
            scores, ids = _check_out(out, (nq, k), False, None)
        self._store.search(_address(q), nq, False, k, kernel_metric, depth, False, bool(half_queries), path,
                           _address(scores), _address(ids), 0)
        return (scores, ids) if out is None else out


class _NoContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class DeviceMirror:
    """The GPU side of an index with ``device="cuda"``: a copy of its arrays on one GPU.

    The host arrays stay the index's truth (add, remove, save and mmap work as
    on the CPU); the device copy is made by ``sync`` (or the first search) and
    dropped by ``invalidate`` after every change, so the first search after a
    change uploads the index again. The caller holds the index's lock: read for
    ``sync``/``search``, write for ``invalidate``. Subclasses name the store
    class (``store_class.from_index(index, ordinal)``) and define ``search``.
    """

    store_class: type = type(None)

    def __init__(self, device="cuda"):
        ordinal = parse_device(device)
        if ordinal is None:
            raise ValueError(f"device: a {type(self).__name__} lives on a GPU ('cuda' or 'cuda:N')")
        require(ordinal)
        self._ordinal = ordinal
        self._store = None
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        return f"cuda:{self._ordinal}"

    def invalidate(self) -> None:
        self._store = None

    def sync(self, index):
        with self._lock:
            if self._store is None:
                self._store = self.store_class.from_index(index, self._ordinal)
            return self._store

    def _current(self, index):
        store = self._store
        return store if store is not None else self.sync(index)

    @classmethod
    def for_device(cls, device, current=None):
        """The mirror for ``device`` ("cpu" -> None), keeping ``current`` when it is already there."""
        ordinal = parse_device(device)
        if ordinal is None:
            return None
        if current is not None and current._ordinal == ordinal:
            return current
        return cls(f"cuda:{ordinal}")


class DenseMirror(DeviceMirror):
    """The GPU side of a ``DenseIndex(device="cuda")``."""

    store_class = CudaDenseStore

    def search(self, index, queries, k, rescore=None, **options):
        return self._current(index).search(queries, k, rescore, **options)


def mirror_for(device, current: Optional[DenseMirror] = None) -> Optional[DenseMirror]:
    """The DenseIndex mirror for ``device`` ("cpu" -> None), keeping ``current`` when it is already there."""
    return DenseMirror.for_device(device, current)


# ---------------------------------------------------------------------- top-k of given scores

def topk(scores, k: int, *, device: Optional[int] = None, out=None) -> Tuple:
    """The k largest of each row of ``scores`` ((n,) or (m, n) float32), largest first, ties by smaller index.

    Returns ``(values, indices)`` of shape (k,) or (m, k), padded with -inf / -1
    when k > n; numpy in, numpy out (computed on ``cuda:device``, default 0);
    device arrays in, device arrays out (on their own GPU and stream).
    """
    k = as_k(k)
    if k > MAX_K:
        raise ValueError(f"k: at most {MAX_K} on the GPU, got {k}")
    if _on_device(scores):
        cp = _cupy()
        x = _as_cupy(scores, cp)
        ordinal = x.device.id if device is None else int(device)
    else:
        cp = None
        x = np.asarray(scores)
        ordinal = 0 if device is None else int(device)
    ext = require(ordinal)
    if x.ndim not in (1, 2):
        raise ValueError(f"scores: expected a 1-d or 2-d array, got {x.ndim}-d")
    if x.dtype.kind != "f":
        raise TypeError(f"scores: dtype {x.dtype} is not a floating type")
    vector = x.ndim == 1
    m, n = (1, x.shape[0]) if vector else x.shape
    shape = (k,) if vector else (m, k)
    if cp is not None:
        with cp.cuda.Device(ordinal):
            if x.device.id != ordinal:
                raise ValueError(f"scores: the array is on cuda:{x.device.id}, not cuda:{ordinal}")
            x = cp.ascontiguousarray(x, dtype=cp.float32)
            values, indices = (cp.empty(shape, cp.float32), cp.empty(shape, cp.int64)) if out is None else \
                _check_out(out, shape, True, cp)
            ext.topk(ordinal, _address(x), m, n, True, k, _address(values), _address(indices), _stream_of(scores, cp))
        return out if out is not None else _as_input_kind(scores, (values, indices))
    x = np.ascontiguousarray(x, dtype=np.float32)
    values, indices = (np.empty(shape, np.float32), np.empty(shape, np.int64)) if out is None else \
        _check_out(out, shape, False, None)
    ext.topk(ordinal, _address(x), m, n, False, k, _address(values), _address(indices), 0)
    return (values, indices) if out is None else out
