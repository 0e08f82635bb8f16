"""flatcoat: a retrieval engine with a native core.

Dense search over quantized vectors (:class:`DenseIndex`, partitioned
:class:`IVFIndex`), late-interaction MaxSim over multi-vector documents,
attributes and filters on every index, hybrid lexical + dense retrieval, text
encoders on ONNX Runtime, and evaluation on BEIR-format collections.
"""

from __future__ import annotations

from . import _core
from ._persist import IndexFormatError, load
from . import _validate
from .dense import DenseIndex
from . import eval  # noqa: F401 - flatcoat.eval; not in __all__, so `import *` keeps the builtin eval
from .encoders import Encoder
from .ivf import IVFIndex
from .plaid import PlaidIndex
from . import fusion  # noqa: F401 - flatcoat.fusion: Hybrid and the fusion functions
from . import lexical  # noqa: F401 - registers the "bm25" kind for flatcoat.load (bm25s is imported on use)
from .multivector import MultiVectorIndex, maxsim
from .retriever import Hit, Retriever

__version__ = _core.__version__

__all__ = ["DenseIndex", "IVFIndex", "PlaidIndex", "MultiVectorIndex", "maxsim", "Encoder", "Retriever", "Hit", "IndexFormatError", "load", "info", "set_num_threads", "get_num_threads", "__version__"]


def info() -> dict:
    """What this build and machine offer: version, ISAs, threads, CUDA, and the CPU features
    each ISA level needs (``cpu_features``: ``{isa: {feature: present}}``)."""
    return {
        "version": __version__,
        "compiled_isas": list(_core.compiled_isas()),
        "detected_isa": _core.detected_isa(),
        "isa": _core.active_isa(),
        "threads": _core.num_threads(),
        "hardware_threads": _core.hardware_threads(),
        "cuda_compiled": bool(_core.cuda_compiled),
        "cpu_features": _cpu_features(),
    }


def _cpu_features() -> dict:
    """``{isa: {feature: present}}``: what each level checks beyond the one below."""
    features: dict = {}
    for isa, name, present in _core.cpu_features():
        features.setdefault(isa, {})[name] = present
    return features


def set_num_threads(n: int) -> None:
    """Threads used by add/search in the core; 0 restores the default (every hardware thread).

    ``n`` is an integer from 0 to ``info()["hardware_threads"]``. More threads
    than hardware threads would only time-slice the same cores (no speed-up)
    while each one holds its own top-k buffers (memory multiplied), so larger
    values are refused.
    """
    cap = _core.hardware_threads()
    n = _validate.as_int(n, "n", 0)
    if n > cap:
        raise ValueError(
            f"n: at most {cap}, the hardware threads of this machine (more would only time-slice the same "
            f"cores and multiply per-thread top-k memory), got {n}; 0 restores the default"
        )
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the core uses now (see :func:`set_num_threads`)."""
    return _core.num_threads()
