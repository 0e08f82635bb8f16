"""This machine's ceilings: DRAM read bandwidth and float32 matmul GFLOP/s.

Every dense benchmark states its speed as a fraction of these two numbers, so
they are measured in the same run as the benchmark (``measure()``), never
copied from a datasheet. They are measured the one way ``flatcoat bench``
measures them: the core's probes (``flatcoat.bench``), with the best ISA
this CPU has, on the installed flatcoat.

Memory read bandwidth
    A buffer far beyond the last-level cache (1 GiB by default; L3 is 32 MiB
    here) is read start to end by ``flatcoat._core.probe_read_bandwidth``
    (independent accumulators, so the loop is limited by loads, not by the
    adds; the GIL released, one slice per core thread). Reported with 1 thread
    and with all CPUs; the best of ``repeats`` passes, after one pass that
    touches every page. numpy ``int64 .sum()`` (one thread) is reported too,
    for reference: it often lands below the dedicated loop.

float32 matmul GFLOP/s
    numpy ``A @ B`` in float32 for two shapes, 2048 x 2048 x 2048 and
    4096 x 384 x 4096 (the shape of a 384-dim batch scan), median of repeats,
    with numpy's BLAS set to all threads: what a batch scan in numpy could
    reach. ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` are read when OpenBLAS
    loads, so this module can only report them (``env``) together with the
    kernel OpenBLAS chose (``blas``, via threadpoolctl when installed): unset
    them on the command line to measure the real ceiling.

The core's arithmetic peaks (float32 FMA, int8 dot, popcount; ``probes``) are
reported beside them.

Run ``python bench/ceilings.py [--json FILE]``; it takes about 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Optional

import numpy as np

from flatcoat import _core
from flatcoat.bench import arithmetic_peaks, read_bandwidth


def memory_bandwidth(nbytes: int = 1 << 30, threads_list=(1, None), repeats: int = 5) -> dict:
    """Read bandwidth in GB/s (1e9 bytes/s) of a ``nbytes`` buffer, per thread count.

    ``None`` in ``threads_list`` means all CPUs. Returns
    ``{"method", "buffer_bytes", "gbps": {threads: best GB/s}, "numpy_sum_int64_gbps", "best_gbps"}``.
    """
    cpus = os.cpu_count() or 1
    out = {"method": f"flatcoat._core.probe_read_bandwidth ({_core.detected_isa()})", "buffer_bytes": nbytes,
           "gbps": {}}
    for t in threads_list:
        out["gbps"][t or cpus] = read_bandwidth(nbytes, t or cpus, repeats)
    as64 = np.ones(nbytes // 8, dtype=np.int64)
    best = min(_timed(lambda: as64.sum()) for _ in range(max(2, repeats // 2)))
    out["numpy_sum_int64_gbps"] = as64.nbytes / best / 1e9
    out["best_gbps"] = max(out["gbps"].values())
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def blas_info() -> list:
    """The BLAS libraries loaded in this process and the kernel each chose (needs threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return [{"note": "threadpoolctl not installed: pip install threadpoolctl"}]
    return [
        {k: d.get(k) for k in ("internal_api", "prefix", "version", "architecture", "num_threads", "filepath")}
        for d in threadpoolctl.threadpool_info()
        if d.get("user_api") == "blas"
    ]


def openblas_env() -> dict:
    return {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                             "OMP_NUM_THREADS")}


def matmul_gflops(shapes=((2048, 2048, 2048), (4096, 384, 4096)), repeats: int = 5,
                  threads: Optional[int] = None) -> dict:
    """float32 numpy matmul GFLOP/s (2*m*k*n / median seconds) per (m, k, n) shape.

    ``threads``: BLAS threads (default all CPUs; needs threadpoolctl to apply).
    """
    rng = np.random.default_rng(0)
    limiter = None
    try:
        import threadpoolctl
        limiter = threadpoolctl.threadpool_limits(threads or os.cpu_count() or 1, user_api="blas")
    except ImportError:
        pass
    try:
        out = {}
        for m, k, n in shapes:
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            c = np.empty((m, n), dtype=np.float32)
            np.matmul(a, b, out=c)  # warm
            t = statistics.median(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(repeats))
            out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / t / 1e9
        return {"gflops": out, "best_gflops": max(out.values())}
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def measure(bandwidth_bytes: int = 1 << 30, repeats: int = 5) -> dict:
    """Both ceilings plus the environment that shapes them, as one dict."""
    t0 = time.perf_counter()
    bw = memory_bandwidth(bandwidth_bytes, repeats=repeats)
    mm = matmul_gflops(repeats=repeats)
    probes = arithmetic_peaks(os.cpu_count() or 1, repeats=repeats)
    return {
        "memory": bw,
        "matmul": mm,
        "probes": probes,
        "blas": blas_info(),
        "env": openblas_env(),
        "cpus": os.cpu_count(),
        "seconds": time.perf_counter() - t0,
    }


def format_report(c: dict) -> str:
    bw, mm = c["memory"], c["matmul"]
    lines = [f"memory read bandwidth ({bw['method']}, {bw['buffer_bytes'] / 2**30:.2f} GiB buffer, best of repeats):"]
    for t, g in bw["gbps"].items():
        lines.append(f"  {t} thread(s): {g:.1f} GB/s")
    lines.append(f"  numpy int64 .sum() (1 thread, reference): {bw['numpy_sum_int64_gbps']:.1f} GB/s")
    lines.append("float32 matmul (numpy, median of repeats):")
    for s, g in mm["gflops"].items():
        lines.append(f"  {s}: {g:.1f} GFLOP/s")
    p = c["probes"]
    lines.append(f"core probes (all CPUs): float32 FMA {p['fma_gflops']:.1f} GFLOP/s, int8 dot {p['int8_gops']:.1f} "
                 f"GOP/s, popcount {p['popcount_g_per_s']:.2f} G/s")
    for b in c["blas"]:
        lines.append(f"  BLAS: {b}")
    lines.append(f"  env: {c['env']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bytes", type=int, default=1 << 30, help="bandwidth buffer size (default 1 GiB)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the report to this file")
    a = p.parse_args(argv)
    c = measure(a.bytes, a.repeats)
    print(format_report(c))
    print(f"({c['seconds']:.1f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(c, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
