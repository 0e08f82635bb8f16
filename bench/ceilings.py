"""This machine's ceilings: DRAM read bandwidth and float32 matmul GFLOP/s.

Every dense benchmark states its speed as a fraction of these two numbers, so
they are measured in the same run as the benchmark (``measure()``), never
copied from a datasheet.

Memory read bandwidth
    A buffer far beyond the last-level cache (1 GiB by default; L3 is 32 MiB
    here) is read start to end by a dedicated loop: a few lines of C (AVX2
    256-bit loads into four independent accumulators, so the loop is limited
    by loads, not by the adds) compiled with the system C compiler into a
    cached shared library and called through ``ctypes`` (which releases the
    GIL, so Python threads each read their own slice of the buffer in
    parallel). Reported with 1 thread and with all threads; the best of
    ``repeats`` passes, after one pass that touches every page. Without a C
    compiler it falls back to numpy ``np.bitwise_or.reduce`` over uint64, also
    one thread per slice (numpy reductions release the GIL), and says so.
    numpy ``int64 .sum()`` (one thread) is reported too, for reference: it
    often lands below the dedicated loop.

float32 matmul GFLOP/s
    numpy ``A @ B`` in float32 for two shapes, 2048 x 2048 x 2048 and
    4096 x 384 x 4096 (the shape of a 384-dim batch scan), median of repeats,
    with numpy's BLAS set to all threads. ``OPENBLAS_CORETYPE`` /
    ``OPENBLAS_L2_SIZE`` are read when OpenBLAS loads, so this module can only
    report them (``env``) together with the kernel OpenBLAS chose
    (``blas``, via threadpoolctl when installed): unset them on the command
    line to measure the real ceiling.

Run ``python bench/ceilings.py [--json FILE]``; it takes about 10 s.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, List, Optional

import numpy as np

_READ_C = r"""
#include <immintrin.h>  // AVX2 loads and 64-bit adds
#include <stddef.h>     // size_t
#include <stdint.h>     // uint64_t

/* Reads n bytes (n a multiple of 128, p 32-byte aligned) once; returns a value
   that depends on every byte so that no compiler can drop the loads. */
uint64_t read_bytes_haswell(const void* p, size_t n) {
    const __m256i* v = (const __m256i*)p;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0, m = n / 32; i < m; i += 4) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + i));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + i + 1));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + i + 2));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + i + 3));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i*)out, s);
    return out[0] + out[1] + out[2] + out[3];
}
"""

_reader_cache: dict = {}


def _c_reader() -> Optional[Callable[[np.ndarray], int]]:
    """The AVX2 read loop as a ctypes function, or None (no compiler / no AVX2)."""
    if "fn" in _reader_cache:
        return _reader_cache["fn"]
    fn = None
    try:
        with open("/proc/cpuinfo") as f:
            has_avx2 = " avx2" in f.read()
    except OSError:
        has_avx2 = False
    cc = os.environ.get("CC", "cc")
    if has_avx2:
        tag = hashlib.sha1(_READ_C.encode()).hexdigest()[:12]
        so = os.path.join(tempfile.gettempdir(), f"flatcoat_bench_read_{tag}.so")
        try:
            if not os.path.exists(so):
                src = so[:-3] + ".c"
                with open(src, "w") as f:
                    f.write(_READ_C)
                tmp = so + f".{os.getpid()}"
                subprocess.run([cc, "-O2", "-mavx2", "-shared", "-fPIC", src, "-o", tmp],
                               check=True, capture_output=True, timeout=60)
                os.replace(tmp, so)
            lib = ctypes.CDLL(so)
            lib.read_bytes_haswell.restype = ctypes.c_uint64
            lib.read_bytes_haswell.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

            def fn(a: np.ndarray) -> int:
                return lib.read_bytes_haswell(a.ctypes.data, a.nbytes)
        except (OSError, subprocess.SubprocessError):
            fn = None
    _reader_cache["fn"] = fn
    return fn


def _numpy_reader(a: np.ndarray) -> int:
    return int(np.bitwise_or.reduce(a.view(np.uint64)))


def _aligned_buffer(nbytes: int, align: int = 4096) -> np.ndarray:
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    buf = raw[start:start + nbytes]
    buf.view(np.uint64)[:] = np.arange(nbytes // 8, dtype=np.uint64)  # touch every page
    return buf


def _parallel_read(reader, slices: List[np.ndarray]) -> float:
    """Seconds from the first start to the last end, one thread per slice."""
    starts, ends = [0.0] * len(slices), [0.0] * len(slices)
    barrier = threading.Barrier(len(slices))

    def work(i):
        barrier.wait()
        starts[i] = time.perf_counter()
        reader(slices[i])
        ends[i] = time.perf_counter()

    if len(slices) == 1:
        work(0)
    else:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(slices))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return max(ends) - min(starts)


def memory_bandwidth(nbytes: int = 1 << 30, threads_list=(1, None), repeats: int = 5) -> dict:
    """Read bandwidth in GB/s (1e9 bytes/s) of a ``nbytes`` buffer, per thread count.

    ``None`` in ``threads_list`` means all CPUs. Returns
    ``{"method", "buffer_bytes", "gbps": {threads: best GB/s}, "numpy_sum_int64_gbps"}``.
    """
    nbytes -= nbytes % (128 * 64)
    buf = _aligned_buffer(nbytes)
    reader = _c_reader()
    method = "C AVX2 read loop (ctypes)" if reader else "numpy bitwise_or.reduce uint64 (no C compiler)"
    reader = reader or _numpy_reader
    cpus = os.cpu_count() or 1
    out = {"method": method, "buffer_bytes": nbytes, "gbps": {}}
    for t in threads_list:
        t = t or cpus
        chunk = nbytes // t
        chunk -= chunk % 128
        slices = [buf[i * chunk:(i + 1) * chunk] for i in range(t)]
        _parallel_read(reader, slices)  # warm
        best = min(_parallel_read(reader, slices) for _ in range(repeats))
        out["gbps"][t] = chunk * t / best / 1e9
    as64 = buf.view(np.int64)
    best = min(_timed(lambda: as64.sum()) for _ in range(max(2, repeats // 2)))
    out["numpy_sum_int64_gbps"] = nbytes / best / 1e9
    out["best_gbps"] = max(out["gbps"].values())
    del buf, as64
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
    return {
        "memory": bw,
        "matmul": mm,
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
