"""flatcoat: a retrieval engine with a native core.

Dense search over quantized vectors (:class:`DenseIndex`), late-interaction
MaxSim over multi-vector documents, text encoders on ONNX Runtime, and
evaluation on BEIR-format collections.
"""

from __future__ import annotations

from . import _core
from ._persist import IndexFormatError, load
from .dense import DenseIndex
from . import eval
from .encoders import Encoder
from .multivector import MultiVectorIndex, maxsim
from .retriever import Hit, Retriever

__version__ = _core.__version__

__all__ = ["DenseIndex", "MultiVectorIndex", "maxsim", "Encoder", "Retriever", "Hit", "eval", "IndexFormatError", "load", "info", "set_num_threads", "get_num_threads", "__version__"]


def info() -> dict:
    """What this build and machine offer: version, ISAs, threads, CUDA."""
    return {
        "version": __version__,
        "compiled_isas": list(_core.compiled_isas()),
        "detected_isa": _core.detected_isa(),
        "isa": _core.active_isa(),
        "threads": _core.num_threads(),
        "hardware_threads": _core.hardware_threads(),
        "cuda_compiled": bool(_core.cuda_compiled),
    }


def set_num_threads(n: int) -> None:
    """Threads used by add/search in the core (0 restores the default: all cores)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.num_threads()
