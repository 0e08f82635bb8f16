"""GPU search with flatcoat's CUDA kernels.

The kernels live in the optional extension ``flatcoat._cuda``, built only when
a CUDA toolkit is present (``FLATCOAT_CUDA=ON pip install .``, see
docs/gpu.md) and imported here on first use, so a CPU-only install never loads
it. Queries may be numpy arrays (results come back as numpy) or device arrays:
CuPy, PyTorch CUDA tensors or anything with ``__cuda_array_interface__`` or a
CUDA ``__dlpack__`` (used in place, zero-copy; results come back as CuPy, or as
torch tensors for torch input). Device input needs CuPy to allocate results.

Every search follows flatcoat's result rule: ``(scores, ids)`` of shape
``(q, k')`` with ``k' = min(k, len(store))``, one query giving ``q = 1``.

>>> import flatcoat.cuda
>>> flatcoat.cuda.available() in (True, False)
True
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from typing import Optional, Tuple

import numpy as np

from ._device import IndexSource, parse_device
from ._storage import DENSE_STORAGES, METRICS, dense_code_layout
from ._validate import as_bool, as_choice, as_float_matrix, as_ids, as_int, as_k, as_rerank, normalize_rows, read_only

__all__ = [
    "CudaUnavailableError", "available", "device_count", "unavailable_reason", "require", "parse_device",
    "CudaDenseStore", "DeviceMirror", "DenseMirror", "topk", "MAX_K",
]

#: The largest k (and rerank depth) the GPU search and top-k accept, once bounded by the data's size.
MAX_K = 4096

_BUILD_HINT = (
    "to search on a GPU, reinstall flatcoat from source with a CUDA toolkit (nvcc) available: "
    "FLATCOAT_CUDA=ON pip install --no-build-isolation . (see docs/gpu.md)"
)
_UPLOAD_CHUNK_BYTES = 64 << 20  # host rows gathered per upload step (bounds the extra host memory)
_PATHS = ("auto", "scan", "mma")


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
    device = as_int(device, "device", minimum=0)
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
    if device >= n:
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


def _gpu_ordinal(device, owner: str) -> int:
    """The ordinal of a GPU device name ("cuda", "cuda:N"); "cpu" is an error naming ``owner``."""
    ordinal = parse_device(device)
    if ordinal is None:
        raise ValueError(f"device: a {owner} lives on a GPU; pass 'cuda' or 'cuda:N', got {device!r}")
    return ordinal


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
    """A CuPy view of a device array (zero-copy: the CUDA array interface, else DLPack)."""
    if isinstance(x, cp.ndarray):
        return x
    try:
        if getattr(x, "__cuda_array_interface__", None) is not None:
            return cp.asarray(x)
    except (AttributeError, RuntimeError, TypeError):
        pass
    return cp.from_dlpack(x)


def _device_matrix(x, name: str, dim: int, device: int, cp):
    """A C-contiguous float32 (n, dim) CuPy view of a device array (copying only to convert); one
    (dim,) vector is (1, dim)."""
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


def _outputs(out, shape, cp, device: int):
    """``(scores float32, ids int64)`` of ``shape``: new arrays (CuPy when ``cp``, else numpy) or the
    caller's ``out`` pair, whose dtype, shape, order and side the extension checks."""
    if out is not None:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"out: expected a tuple (scores, ids) of shape {shape}, got {type(out).__name__}")
        return out
    if cp is None:
        return np.empty(shape, np.float32), np.empty(shape, np.int64)
    with cp.cuda.Device(device):
        return cp.empty(shape, cp.float32), cp.empty(shape, cp.int64)


def _as_input_kind(x, arrays):
    """Device results as the framework of the input: torch for torch, CuPy otherwise."""
    if type(x).__module__.split(".")[0] == "torch":
        torch = sys.modules["torch"]
        return tuple(torch.from_dlpack(a) for a in arrays)
    return tuple(arrays)


def _bounded_k(k, n: int, name: str = "k") -> int:
    """``min(k, n)`` for a validated positive ``k``, within the GPU's limit."""
    bounded = min(k, n)
    if bounded > MAX_K:
        raise ValueError(f"{name}: at most {MAX_K} on the GPU (here min({name}, {n}) = {bounded}), got {k}")
    return bounded


def _upload(store, name: str, a, xp, order=None) -> None:
    """Copies the rows of ``a`` (numpy or CuPy) into field ``name`` of an extension store, in steps of
    about 64 MiB; with ``order``, row i of the field is ``a[order[i]]``."""
    n = a.shape[0]
    if n == 0:
        return
    step = max(1, _UPLOAD_CHUNK_BYTES // max(1, a.nbytes // n))
    for start in range(0, n, step):
        part = a[start : start + step] if order is None else a[order[start : start + step]]
        store.upload(name, start, xp.ascontiguousarray(part))  # a view when the rows are already contiguous


def _arrays_side(arrays: dict, reference: str):
    """numpy or CuPy: the side of ``arrays[reference]``, which every other array must share."""
    on_device = _on_device(arrays[reference])
    for name, a in arrays.items():
        if a is not None and _on_device(a) != on_device:
            raise TypeError(f"{name}: all arrays must be on the same side (host or device) as {reference}")
    return _cupy() if on_device else np


# ---------------------------------------------------------------------- dense search

class _DeviceStore:
    """What every GPU store shows: its dimension, storage, device and the device memory it holds."""

    _dim: int
    _storage: str
    _device: int

    dim = read_only("_dim", "Vector dimension.")
    storage = read_only("_storage", "How vectors are stored (a name of _storage).")
    @property
    def device(self) -> str:
        return f"cuda:{self._device}"

    @property
    def nbytes(self) -> int:
        """Device bytes held (rows padded to 16 bytes, ids and the storage's side arrays)."""
        return int(self._store.nbytes)


class CudaDenseStore(_DeviceStore):
    """A dense index's arrays in GPU memory, searched by flatcoat's CUDA kernels.

    Same results as :class:`flatcoat.DenseIndex` for the same arrays: top-k
    best first, ties by the smaller id. The arrays are those of a DenseIndex
    (see ``from_index`` and ``flatcoat._storage.dense_code_layout``): ``codes``
    (f32: float32 (n, dim); f16: uint16 or float16 (n, dim); int8: uint8
    (n, dim) with ``scale`` and ``offset`` float32 (n,); binary: uint64
    (n, ceil(dim / 64))), ``ids`` int64 (n,), ``sq_norms`` for l2, and
    ``float_rows`` / ``float_sq_norms`` for re-ranking. They may be numpy or
    CuPy arrays; they are copied to ``device`` (in ascending id order, which is
    how the kernels break ties) and not referenced afterwards.
    """

    def __init__(self, dim: int, *, metric: str = "ip", storage: str = "f32", codes, ids, sq_norms=None,
                 scale=None, offset=None, float_rows=None, float_sq_norms=None, device: str = "cuda"):
        self._dim = as_int(dim, "dim", minimum=1)
        self._metric = as_choice(metric, "metric", METRICS)
        self._storage = as_choice(storage, "storage", DENSE_STORAGES)
        if self._storage == "bf16":
            raise ValueError("storage: bf16 has no CUDA kernels yet; use 'f16' on the GPU")
        self._device = _gpu_ordinal(device, "CudaDenseStore")
        ext = require(self._device)
        if metric == "l2" and storage != "binary" and sq_norms is None:
            raise ValueError("sq_norms: l2 search needs the squared norms of the stored (decoded) rows")
        if storage == "int8" and (scale is None or offset is None):
            raise ValueError("scale, offset: int8 storage needs the rows' scales and offsets")
        if float_rows is None and float_sq_norms is not None:
            raise ValueError("float_sq_norms: given without float_rows")
        self._keep_float = float_rows is not None
        if metric == "l2" and self._keep_float and float_sq_norms is None:
            raise ValueError("float_sq_norms: l2 re-ranking needs the float rows' squared norms")

        fields = {"codes": codes, "ids": ids, "sq_norms": sq_norms, "scale": scale, "offset": offset,
                  "float_rows": float_rows, "float_sq_norms": float_sq_norms}
        xp = _arrays_side(fields, "ids")
        fields = {name: a for name, a in fields.items() if a is not None}
        if xp is np:
            fields = {name: np.asarray(a) for name, a in fields.items()}
            fields["ids"] = as_ids(fields["ids"], "ids", len(fields["ids"]))
        else:
            fields = {name: _as_cupy(a, xp) for name, a in fields.items()}
        if self._storage == "f16" and fields["codes"].dtype == np.float16:
            fields["codes"] = fields["codes"].view(xp.uint16)
        ids = fields["ids"]
        n = int(ids.shape[0]) if ids.ndim == 1 else -1
        row_shape, code_dtype = dense_code_layout(self._storage, self._dim)
        layout = {"codes": (row_shape, code_dtype), "ids": ((), np.dtype(np.int64)),
                  "float_rows": ((self._dim,), np.dtype(np.float32))}  # the others: float32 per row
        for name, a in fields.items():
            shape, dtype = layout.get(name, ((), np.dtype(np.float32)))
            if a.dtype != dtype or tuple(a.shape) != (n,) + tuple(shape):
                raise ValueError(f"{name}: expected {dtype} of shape {(n,) + tuple(shape)}, got {a.dtype} {tuple(a.shape)}")

        # The kernels break ties by the smaller row, so rows go up in ascending id order.
        order = None
        if n > 1 and not bool((ids[1:] > ids[:-1]).all()):
            order = xp.argsort(ids, kind="stable") if xp is np else xp.argsort(ids)
            sorted_ids = ids[order]
            if not bool((sorted_ids[1:] > sorted_ids[:-1]).all()):
                raise ValueError("ids: every id must be distinct")
        if xp is not np and n and int(ids.min()) < 0:
            raise ValueError("ids: must be non-negative")

        self._store = ext.DenseStore(self._device, self._storage, self._dim, n, sq_norms is not None,
                                     float_rows is not None, float_sq_norms is not None)
        with xp.cuda.Device(self._device) if xp is not np else contextlib.nullcontext():
            for name, a in fields.items():
                _upload(self._store, name, a, xp, order)
        self._rows = n

    @classmethod
    def from_index(cls, index, device: str = "cuda") -> "CudaDenseStore":
        """A copy of a :class:`flatcoat.DenseIndex` on ``device`` (through its public ``arrays()``)."""
        return cls._from_arrays(index.dim, index.metric, index.storage, index.arrays(), device)

    @classmethod
    def _from_arrays(cls, dim, metric, storage, arrays: dict, device) -> "CudaDenseStore":
        return cls(dim, metric=metric, storage=storage, device=device, **arrays)

    # -------------------------------------------------------------- properties

    @property
    def metric(self) -> str:
        return self._metric

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        return (f"CudaDenseStore(dim={self._dim}, metric={self._metric!r}, storage={self._storage!r}, "
                f"count={self._rows}, device={self.device!r})")

    # -------------------------------------------------------------- search

    def search(self, queries, k: int = 10, *, rerank: Optional[int] = None, half_queries: bool = False,
               path: str = "auto", out=None) -> Tuple:
        """``(scores, ids)``, both (q, k') with ``k' = min(k, len(self))``, as DenseIndex.search.

        ``queries``: (q, dim) or one (dim,) vector (q = 1); numpy (results are
        numpy) or a device array (results are CuPy, or torch for torch input;
        the work runs on the producer's stream and is finished when this
        returns). ``rerank=R`` (``R >= k``) re-ranks the R best of the scan
        exactly against the float rows. ``k'`` and ``min(R, len(self))`` are at
        most ``MAX_K``. ``half_queries``: batched f16/int8 searches round each
        query value to one f16 term on the tensor cores (twice as fast, about
        3 decimal digits of the query) instead of two (float32-grade).
        ``path``: "auto", "scan" (CUDA cores) or "mma" (tensor cores; f16 and
        int8). ``out``: a ``(scores, ids)`` pair of shape (q, k') to write
        into, of the queries' kind.
        """
        k = as_k(k)
        rerank = as_rerank(rerank, k, self._keep_float)
        if rerank is not None:
            rerank = _bounded_k(rerank, self._rows, "rerank")
        return self._search(queries, _bounded_k(k, self._rows), rerank, as_bool(half_queries, "half_queries"),
                            as_choice(path, "path", _PATHS), out)

    def _search(self, queries, k: int, rerank: Optional[int], half_queries: bool, path: str, out):
        """search() with ``k`` (and ``rerank``) already validated and bounded by the rows (k may be 0)."""
        kernel_metric = "l2" if self._metric == "l2" else "ip"
        cosine = self._metric == "cosine"
        if _on_device(queries):
            cp = _cupy()
            q = _device_matrix(queries, "queries", self._dim, self._device, cp)
            scores, ids = _outputs(out, (q.shape[0], k), cp, self._device)
            if k and q.shape[0]:
                with cp.cuda.Device(self._device):
                    # Cosine queries are normalised on the device, exactly as normalize_rows does on the host.
                    self._store.search(q, k, kernel_metric, rerank or 0, cosine, half_queries, path, scores, ids,
                                       _stream_of(queries, cp))
            return out if out is not None else _as_input_kind(queries, (scores, ids))
        q = as_float_matrix(queries, "queries", self._dim)
        if cosine:
            q = normalize_rows(q, "queries")
        scores, ids = _outputs(out, (q.shape[0], k), None, self._device)
        if k and q.shape[0]:
            self._store.search(q, k, kernel_metric, rerank or 0, False, half_queries, path, scores, ids)
        return (scores, ids) if out is None else out


class DeviceMirror:
    """The GPU side of an index with ``device="cuda"``: a copy of its arrays on one GPU.

    Implements the mirror protocol of ``flatcoat._device``: the host arrays
    stay the index's truth (add, remove, save and mmap work as on the CPU);
    the device copy is made by ``sync`` (or the first search) from the
    ``IndexSource``'s views and dropped by ``invalidate`` after every change,
    so the first search after a change uploads the index again. The caller
    holds the index's lock: read for ``sync``/``search``, write for
    ``invalidate``. Subclasses name the store class, whose
    ``_from_arrays(dim, metric, storage, arrays, device)`` builds the copy,
    and define ``search``.
    """

    store_class: type = type(None)

    def __init__(self, device: str = "cuda"):
        self._ordinal = _gpu_ordinal(device, type(self).__name__)
        require(self._ordinal)
        self._store = None
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        return f"cuda:{self._ordinal}"

    def invalidate(self) -> None:
        self._store = None

    def sync(self, source: IndexSource):
        """Uploads the index now unless the device copy is current; returns the store."""
        with self._lock:
            if self._store is None:
                self._store = self.store_class._from_arrays(source.dim, source.metric, source.storage,
                                                            source.views(), self.device)
            return self._store

    def _current(self, source: IndexSource):
        store = self._store
        return store if store is not None else self.sync(source)


class DenseMirror(DeviceMirror):
    """The GPU side of a ``DenseIndex(device="cuda")``."""

    store_class = CudaDenseStore

    def search(self, source: IndexSource, queries, k: int, *, rerank: Optional[int] = None):
        """DenseIndex.search on the device copy; ``k`` and ``rerank`` come validated and bounded by the index."""
        store = self._current(source)
        k = _bounded_k(as_int(k, "k", minimum=0), len(store))
        if rerank is not None:
            rerank = _bounded_k(as_int(rerank, "rerank", minimum=k), len(store), "rerank")
        return store._search(queries, k, rerank, False, "auto", None)


# ---------------------------------------------------------------------- top-k of given scores

def topk(scores, k: int, *, device: Optional[str] = None, out=None) -> Tuple:
    """The ``k`` largest of each row of ``scores`` ((n,) or (m, n) float), largest first, ties by smaller index.

    Returns ``(values, indices)`` float32 and int64 of shape (m, k') with
    ``k' = min(k, n)`` (one (n,) row gives m = 1); numpy in, numpy out
    (computed on ``device``, default "cuda"); device arrays in, device arrays
    out (on their own GPU and stream). ``out``: a ``(values, indices)`` pair of
    shape (m, k') of the input's kind.
    """
    k = as_k(k)
    if _on_device(scores):
        cp = _cupy()
        x = _as_cupy(scores, cp)
        ordinal = x.device.id if device is None else _gpu_ordinal(device, "top-k")
    else:
        cp = None
        x = np.asarray(scores)
        ordinal = 0 if device is None else _gpu_ordinal(device, "top-k")
    ext = require(ordinal)
    if x.ndim not in (1, 2):
        raise ValueError(f"scores: expected a 1-d or 2-d array, got {x.ndim}-d")
    if x.dtype.kind != "f":
        raise TypeError(f"scores: dtype {x.dtype} is not a floating type")
    if x.ndim == 1:
        x = x.reshape(1, -1)
    k = _bounded_k(k, x.shape[1])
    if cp is not None:
        if x.device.id != ordinal:
            raise ValueError(f"scores: the array is on cuda:{x.device.id}, not cuda:{ordinal}")
        with cp.cuda.Device(ordinal):
            x = cp.ascontiguousarray(x, dtype=cp.float32)
            values, indices = _outputs(out, (x.shape[0], k), cp, ordinal)
            if k and x.shape[0]:
                ext.topk(ordinal, x, k, values, indices, _stream_of(scores, cp))
        return out if out is not None else _as_input_kind(scores, (values, indices))
    x = np.ascontiguousarray(x, dtype=np.float32)
    values, indices = _outputs(out, (x.shape[0], k), None, ordinal)
    if k and x.shape[0]:
        ext.topk(ordinal, x, k, values, indices)
    return (values, indices) if out is None else out
