"""What the GPU benchmarks (gpu_bench.py, gpu_maxsim.py) share: timing, the setup of CuPy, flatcoat's
CUDA extension and the PyTorch peer, and the run's header (card, versions, command)."""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time


def timed(fn, sync, repeat=7, warmup=2):
    """Median seconds of ``fn()`` over ``repeat`` calls after ``warmup``, each ended by ``sync()``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def setup(tool: str):
    """``(cupy, torch or None, flatcoat._cuda)``, or None (said why) when CuPy is missing; PyTorch,
    the peer, is None (said why) when it is missing or has no CUDA."""
    try:
        import cupy as cp
    except ImportError as exc:
        print(f"{tool}: CuPy is needed to hold the benchmark data on the GPU ({exc}); skipping the benchmarks")
        return None
    import flatcoat.cuda as fc

    ext = fc.require()
    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch.cuda.is_available() is False")
    except ImportError as exc:
        torch = None
        print(f"{tool}: PyTorch peer skipped ({exc})")
    return cp, torch, ext


def run_info(cp, torch, ext) -> dict:
    """The header of a result file: card, date, driver and runtime, versions, command."""
    import flatcoat

    return {
        "card": ext.device_name(0),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "driver": ext.driver_version(),
        "cuda_runtime": ext.runtime_version(),
        "flatcoat": flatcoat.__version__,
        "cupy": cp.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "python": platform.python_version(),
        "command": " ".join([sys.executable] + sys.argv),
    }
