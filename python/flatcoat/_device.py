"""Where an index searches: device names, and the one door from the CPU indexes to GPU code.

The CPU indexes never import a GPU module themselves: they ask
:func:`mirror_for`, which imports ``flatcoat.cuda`` (dense) or
``flatcoat.cuda_maxsim`` (multi-vector) only for a ``"cuda"`` device. The
mirror it returns is the GPU side of one index and reads the index only
through an :class:`IndexSource`:

* ``mirror.device``: ``"cuda:N"``;
* ``mirror.invalidate()``: the index changed (called under its write lock);
* ``mirror.sync(source)``: upload now, if not current (under its read lock);
* ``mirror.search(source, queries, k, **args)``: a search (under its read
  lock); dense args ``rerank`` (int or None), multi-vector args ``subset``
  (``(positions int64, offsets int64 (q + 1))`` resolved by the index, or None)
  and ``query_weights`` (as the user passed them). Queries are passed as the
  user gave them (they may be CuPy or torch device arrays).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

__all__ = ["IndexSource", "Mirrored", "parse_device", "mirror_for", "to_host"]

# kind -> (module, mirror class), imported only when a GPU is asked for
_MIRRORS = {
    "dense": ("flatcoat.cuda", "DenseMirror"),
    "multivector": ("flatcoat.cuda_maxsim", "MultiVectorMirror"),
}


@dataclass(frozen=True)
class IndexSource:
    """What a device mirror may read of an index.

    ``kind``: "dense" or "multivector"; ``metric``: the dense metric (None for
    multi-vector); ``views()``: the dict of stored arrays as numpy views (the
    keys of the index's ``arrays()``), valid only while the caller holds the
    index's lock.
    """

    kind: str
    dim: int
    metric: Optional[str]
    storage: str
    views: Callable[[], Dict[str, np.ndarray]]


def parse_device(device) -> Optional[int]:
    """``"cpu"`` -> None, ``"cuda"`` -> 0, ``"cuda:N"`` -> N; anything else is an error naming ``device``.

    >>> parse_device("cpu"), parse_device("cuda"), parse_device("cuda:1")
    (None, 0, 1)
    """
    if not isinstance(device, str):
        raise TypeError(f"device: expected a string 'cpu', 'cuda' or 'cuda:N', got {type(device).__name__} {device!r}")
    if device == "cpu":
        return None
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isascii() and device[5:].isdigit():
        return int(device[5:])
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def mirror_for(kind: str, device, current=None):
    """The GPU mirror of an index of ``kind`` on ``device``; None for "cpu".

    ``current`` (the index's mirror so far, or None) is kept when it is
    already on that device, so ``index.to(index.device)`` uploads nothing new.
    """
    module_name, class_name = _MIRRORS[kind]
    ordinal = parse_device(device)
    if ordinal is None:
        return None
    name = f"cuda:{ordinal}"
    if current is not None and current.device == name:
        return current
    return getattr(importlib.import_module(module_name), class_name)(name)


class Mirrored:
    """Where an index searches: ``device`` and ``to``, shared by the indexes.

    The index sets ``_KIND``, ``_lock`` (an RWLock) and ``_mirror`` (from
    :func:`mirror_for`), defines ``_source()`` and calls
    ``_invalidate_device()`` under its write lock after every change.
    """

    _KIND = ""
    _mirror = None

    @property
    def device(self) -> str:
        """Where searches run: "cpu", or "cuda:N" for a copy resident in GPU memory."""
        mirror = self._mirror
        return "cpu" if mirror is None else mirror.device

    def to(self, device: str):
        """Searches on ``device`` ("cpu", "cuda", "cuda:N") from now on; uploads now; returns self.

        The host arrays stay the index of record (saving, adding, removing); the
        device copy is refreshed on the first search after a change.
        """
        with self._lock.write():  # no add may slip between the upload and the switch
            mirror = mirror_for(self._KIND, device, self._mirror)
            if mirror is not None:
                mirror.sync(self._source())
            self._mirror = mirror
        return self

    def _invalidate_device(self) -> None:
        if self._mirror is not None:
            self._mirror.invalidate()


def to_host(x):
    """``x`` as something numpy reads: a CuPy array (``.get()``) or a torch tensor (``.cpu()``) is copied
    to the host; anything else is returned as is."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__cuda_array_interface__") or hasattr(x, "__dlpack_device__"):
        if callable(getattr(x, "get", None)):
            return x.get()
        if callable(getattr(x, "cpu", None)):
            return x.cpu()
    return x
