"""ONNX Runtime sessions: provider checks, the session cache, and a session's device.

Every session flatcoat makes comes from :func:`session`, which validates the
execution providers first (:func:`check_providers`): a missing CUDA provider is
explained, including the known trap of ``onnxruntime`` and ``onnxruntime-gpu``
installed together (both write the same ``onnxruntime`` package; the CPU
wheel silently hides CUDA). The checks are pure functions of the names given,
so they are tested everywhere with fake metadata. onnxruntime is imported
lazily, only to make a session.

>>> onnxruntime_conflict(["onnxruntime", "onnxruntime-gpu", "numpy"]) is not None
True
>>> onnxruntime_conflict(["onnxruntime-gpu"]) is None
True
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ._validate import as_int

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
            raise TypeError(f"providers: expected provider names or (name, options) tuples, got {p!r}")
        names.append(name)
    conflict = onnxruntime_conflict(installed) if CUDA in names else None
    for name in names:
        if name in available:
            continue
        message = f"providers: execution provider {name!r} is not available in this onnxruntime; available: {available}"
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


def session_device(session) -> str:
    """Where a session runs: "cuda:N" when CUDA is its first provider, else "cpu"."""
    providers = list(session.get_providers())
    if not providers or providers[0] != CUDA:
        return "cpu"
    options = session.get_provider_options().get(CUDA, {})
    return f"cuda:{int(options.get('device_id', 0))}"


_SESSIONS: Dict[Tuple[str, str, int], Any] = {}


def session(model: Path, providers: Optional[Sequence[Any]], threads: Optional[int]):
    """An InferenceSession of ``model`` (cached per model, providers and thread count)."""
    import onnxruntime as ort

    providers = check_providers(providers, ort.get_available_providers())
    if threads is None:
        # The CPUs this process may run on (a container's quota), not the machine's count.
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = as_int(threads, "threads", 1)
    key = (str(model), repr(providers), threads)  # options too: two device_ids are two sessions
    sess = _SESSIONS.get(key)
    if sess is None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1  # one graph at a time: intra-op threads do the work
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(model), sess_options=so, providers=list(providers))
        _SESSIONS[key] = sess
    return sess
