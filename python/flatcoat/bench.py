"""``flatcoat bench``: measure the machine's ceilings, then the kernels against them.

First the ceilings: memory read bandwidth (a buffer far larger than the
last-level cache), then for each ISA benchmarked its float32 FMA, int8 dot
and 64-bit popcount throughput, each probe with the instruction that ISA's
kernels use (vpdpbusd and vpopcntq on icelake, vpmaddubsw + vpmaddwd and
popcnt below), from registers: a kernel is set against the roof of its own
instructions, which it cannot exceed unless the probe is wrong. Then every
kernel on generated data sized beyond the caches: dense f32/f16/int8/binary
scans at Q = 1 and batched, MaxSim f32/f16/int8, PLAID's stage 4 (residual
codes decompressed in blocks, then MaxSim), the 4-bit PQ fast-scan (IVF
lists, read once per batch), and top-k over 10M scores.
Each figure is the median of several timed repeats after a warm-up, with its
spread, and the percentage of the ceiling that bounds it (bandwidth for a
single-query scan, arithmetic for a batch). The memory is shared with whatever
else runs, so it is read again after each family of kernels and the best
reading is the bandwidth roof.

With several ISAs (``--isa all``) the levels are measured interleaved: each
kernel's data is made once, then every round times each level once, in an
order rotated from round to round, so a level is not favoured by when it ran.
Each level's figure is its median over the rounds; each level is then set
against the level below by the ratio of their medians and an interval for the
median of the per-round paired ratios (order statistics, as a sign test), and
it is called slower only when that whole interval lies above 1. A level that
runs the very code of the level below for a kernel (:func:`code_level`) is
reported as such instead.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._storage import DENSE_STORAGES, MULTIVECTOR_STORAGES, dense_code_layout
from ._validate import as_bool, as_int

__all__ = ["run", "measure_ceilings", "read_bandwidth", "arithmetic_peaks", "code_level", "compare_levels", "Row",
           "Comparison"]


@dataclass
class Row:
    kernel: str
    isa: str
    threads: int
    seconds: float  # median of the repeats (with several ISAs: of the rounds)
    spread: float  # (max - min) / median of the repeats
    items_per_s: float
    item: str  # what items_per_s counts: "vectors", "docs", "scores"
    gb_per_s: float  # bytes of stored data read per second
    gops: float  # arithmetic operations per second / 1e9 (an FMA counts 2)
    bound: str  # "bandwidth" or the compute ceiling that bounds it: "fma", "int8", "popcount"
    percent_of_ceiling: float  # of its ISA's ceiling, set once every ceiling is measured
    bytes_moved: float
    operations: float
    repeats: List[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def _timed(fn: Callable[[], object], repeats: int) -> List[float]:
    fn()  # warm-up: page faults, thread start, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _median_spread(times: List[float]):
    med = statistics.median(times)
    return med, (max(times) - min(times)) / med if med > 0 else 0.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> List[str]:
    """The CPU features the ISA levels check that this CPU has (``flatcoat.info()["cpu_features"]``)."""
    return [name for _, name, present in _core.cpu_features() if present]


class _Progress:
    """tqdm when it is installed and stderr is a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc="flatcoat bench", unit="step", file=sys.stderr)
            except ImportError:
                pass

    def step(self, label: str):
        if self._bar is not None:
            self._bar.set_postfix_str(label)
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


# ----------------------------------------------------------------------------- ceilings


def _best_rate(probe: Callable[[], "_core.ProbeResult"], repeats: int) -> float:
    """The best rate (work per second) of ``repeats`` calls of a probe."""
    return max(probe().rate for _ in range(repeats))


class _UsingIsa:
    """Runs the probes with one ISA (default: the best this CPU has), then restores the active one."""

    def __init__(self, isa: Optional[str] = None):
        self._isa = _core.detected_isa() if isa is None else isa

    def __enter__(self):
        self._previous = _core.active_isa()
        _core.set_active_isa(self._isa)

    def __exit__(self, *exc):
        _core.set_active_isa(self._previous)


def read_bandwidth(nbytes: int, threads: Optional[int] = None, repeats: int = 3) -> float:
    """Memory read bandwidth in GB/s (1e9 bytes/s): the best of ``repeats`` reads of an ``nbytes`` buffer.

    The buffer is written once first so every page is backed; make it far
    larger than the last-level cache. ``threads`` default: flatcoat's setting.
    """
    nbytes = as_int(nbytes, "nbytes", minimum=1 << 16)
    threads = _core.num_threads() if threads is None else as_int(threads, "threads", minimum=1)
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    with _UsingIsa():
        return _best_rate(lambda: _core.probe_read_bandwidth(buffer, threads), as_int(repeats, "repeats", 1)) / 1e9


def arithmetic_peaks(threads: Optional[int] = None, rounds: int = 10_000_000, repeats: int = 3,
                     isa: Optional[str] = None) -> Dict[str, float]:
    """``{"fma_gflops", "int8_gops", "popcount_g_per_s", "bf16_gflops"}``: the core's arithmetic probes
    with one ISA.

    float32 FMA throughput (an FMA counts 2), u8 x s8 multiply-add throughput,
    64-bit popcounts per second and bfloat16 pair products (vdpbf16ps where
    the level has it, else the FMA rate, which the bf16 scan then runs on), each with the instructions ``isa``'s
    kernels use (on sapphirerapids int8 and bf16 are the tile unit's tdpbusd and tdpbf16ps) (default: the best ISA this CPU has), the best of ``repeats``
    on ``threads`` threads (default: flatcoat's setting). Each thread times its
    own loop and the rates add up, so a thread that another process delays
    does not lower the others'. ``rounds`` per thread sizes the loops (10M:
    about 30 ms each).
    """
    threads = _core.num_threads() if threads is None else as_int(threads, "threads", minimum=1)
    rounds = as_int(rounds, "rounds", minimum=1000)
    repeats = as_int(repeats, "repeats", minimum=1)
    with _UsingIsa(isa):
        fma = _best_rate(lambda: _core.probe_fma(rounds, threads), repeats)
        int8 = _best_rate(lambda: _core.probe_int8(rounds, threads), repeats)
        popcount = _best_rate(lambda: _core.probe_popcount(rounds, threads), repeats)
        try:  # levels with AVX512_BF16 (genoa; sapphirerapids: the tile unit) only
            bf16 = _best_rate(lambda: _core.probe_bf16(rounds, threads), repeats)
        except ValueError:
            bf16 = fma  # the bf16 scan runs on float32 FMA there
    return {"fma_gflops": fma / 1e9, "int8_gops": int8 / 1e9, "popcount_g_per_s": popcount / 1e9,
            "bf16_gflops": bf16 / 1e9}


def measure_ceilings(threads: Optional[int] = None, *, bandwidth_bytes: int = 1 << 30, rounds: int = 10_000_000,
                     repeats: int = 3, isa: Optional[str] = None) -> Dict[str, float]:
    """The machine's ceilings: ``{"read_gb_per_s", "fma_gflops", "int8_gops", "popcount_g_per_s"}``.

    :func:`read_bandwidth` of a ``bandwidth_bytes`` buffer (the memory's, read
    with the best ISA) and :func:`arithmetic_peaks` with ``isa``'s instructions
    (default: the best ISA), on ``threads`` threads, best of ``repeats``.
    """
    return {"read_gb_per_s": read_bandwidth(bandwidth_bytes, threads, repeats),
            **arithmetic_peaks(threads, rounds, repeats, isa)}


# ----------------------------------------------------------------------------- the levels, interleaved


def _interleaved(fn: Callable[[], object], isas: Sequence[str], rounds: int, *,
                 own_seconds: bool = False) -> Dict[str, List[float]]:
    """Seconds of ``fn`` per ISA: one warm-up call per ISA, then ``rounds`` rounds that time every ISA once.
    ``own_seconds``: ``fn`` returns the seconds to record (a stage's own time), not its whole call's.

    Round r starts at ISA r (mod the count) and wraps around, so over as many
    rounds as ISAs each one runs once in every position: a level does not
    gain from always following a given other, or from when the machine's
    other load happened to come.
    """
    for name in isas:  # page faults, thread start, caches, the level's code
        _core.set_active_isa(name)
        fn()
    times: Dict[str, List[float]] = {name: [] for name in isas}
    for r in range(rounds):
        first = r % len(isas)
        for name in list(isas[first:]) + list(isas[:first]):
            _core.set_active_isa(name)
            start = time.perf_counter()
            seconds = fn()
            times[name].append(float(seconds) if own_seconds else time.perf_counter() - start)
    return times


def _rows(kernel: str, times: Dict[str, List[float]], threads: int, items: float, item: str, stored: float,
          ops: float, bound: str) -> List[Row]:
    """One Row per ISA from its times; ``items``, ``stored`` bytes and ``ops`` are the work of one call."""
    rows = []
    for name, seconds in times.items():
        med, spread = _median_spread(seconds)
        rows.append(Row(kernel, name, threads, med, spread, items / med, item, stored / med / 1e9, ops / med / 1e9,
                        bound, 0.0, float(stored), float(ops), seconds))
    return rows


# The levels whose kernel tables bring their own code for each benchmarked
# kernel (cpp/src/kernels/<family>/<level>.cpp); any other level runs the code
# of the nearest level below it that does. scalar is the reference for all.
# icelake_t and genoa_t (simd/icelake.hpp, simd/genoa.hpp) inherit skylake_t
# and add only vpdpbusd, vpopcntq and vdpbf16ps, so a kernel that uses none of
# those is skylake's template code on them, compiled with more flags. The
# binary scan's vpopcntq starts at 8 words (512 dimensions): below that
# icelake_t takes the scalar popcnt of haswell and skylake, whose binary scans
# are that one loop. Top-k is one common routine (select_topk, probe.cpp).
_OWN_CODE = {
    "dense f32": ("haswell", "skylake", "neon"),
    "dense f16": ("haswell", "skylake", "neon"),
    "dense bf16": ("haswell", "skylake", "genoa", "neon"),
    "dense int8": ("haswell", "skylake", "icelake", "neon"),
    "dense binary": ("haswell", "neon"),
    "dense binary wide": ("haswell", "icelake", "neon"),  # 8 words or more: vpopcntq
    "maxsim f32": ("haswell", "skylake", "neon"),
    "maxsim f16": ("haswell", "skylake", "neon"),
    "maxsim int8": ("haswell", "skylake", "icelake", "sapphirerapids", "neon"),  # sapphirerapids: tiles
    # PLAID's stage 4: the decompression (kernels/plaid, one template: no vpdpbusd, vpopcntq or
    # vdpbf16ps) and the f32 MaxSim kernel, so icelake and genoa run skylake's code.
    "plaid 2-bit": ("haswell", "skylake", "neon"),
    "pq4 fast-scan": ("haswell", "skylake", "neon"),
    "top-k": (),
}
# Batches (Q of 8 or more) of these scans run on query panels, which the
# sapphirerapids level computes on AMX tiles; single queries keep the vector
# code of the level below.
_OWN_BATCH_CODE = {"dense int8": ("sapphirerapids",), "dense bf16": ("sapphirerapids",)}


def code_level(kernel: str, isa: str, dim: int = 384) -> str:
    """The level whose code ``isa`` runs for a benchmarked ``kernel`` (a Row's name, e.g. "dense f32 Q=64").

    ``dim``: the vectors' dimensions (the binary scan changes instruction at
    512). ``code_level("dense f32 Q=1", "genoa") == "skylake"``: genoa adds no
    instruction the float32 scan uses. A level with its own code is its own.
    """
    family = " ".join(kernel.split(" ")[:2])
    if family == "dense binary" and (dim + 63) // 64 >= 8:
        family = "dense binary wide"
    if family not in _OWN_CODE:
        family = kernel.split(" ")[0]
    if family not in _OWN_CODE:
        raise ValueError(f"code_level: unknown kernel {kernel!r}")
    levels = [name for name in _core.compiled_isas()]
    if isa not in levels:
        raise ValueError(f"code_level: {isa!r} is not compiled here; one of {', '.join(levels)}")
    batch = re.search(r"Q=(\d+)", kernel)
    own = _OWN_CODE[family]
    if batch and int(batch.group(1)) >= 8:
        own = own + _OWN_BATCH_CODE.get(family, ())
    for name in reversed(levels[: levels.index(isa) + 1]):
        if name == "scalar" or name in own:
            return name
    return "scalar"


@dataclass
class Comparison:
    """One level against the level below on one kernel (times: above 1 is slower)."""

    kernel: str
    isa: str
    below: str
    ratio: float  # median seconds of isa / median seconds of below
    low: float  # interval for the median of the per-round ratios isa / below
    high: float
    coverage: float  # the interval's confidence (0 with too few rounds)
    same_code_as: Optional[str]  # the level whose code both run, when they run the same
    verdict: str  # "slower", "faster", "within noise", "same kernel" or "too few rounds"


# The confidence asked of the interval: 5 rounds give 93.75% (every round must agree),
# 7 give 98.4% (the same), 9 give 96.1% (all but one).
_CONFIDENCE = 0.9


def _median_interval(values: Sequence[float], confidence: float = _CONFIDENCE) -> Tuple[float, float, float]:
    """``(low, high, coverage)``: a distribution-free interval for the median of ``values``.

    The j-th smallest and j-th largest value, with the largest j whose
    coverage 1 - 2 P(Binomial(n, 1/2) < j) is at least ``confidence`` (the
    sign test's interval); with too few values for that, the extremes and
    their own coverage (0 for one value).
    """
    x = sorted(values)
    n = len(x)
    below = [math.comb(n, i) / 2.0**n for i in range(n + 1)]  # P(Binomial(n, 1/2) = i)
    j, coverage = 1, max(0.0, 1 - 2 * below[0])
    while j + 1 <= n // 2 and 1 - 2 * sum(below[: j + 1]) >= confidence:
        j += 1
        coverage = 1 - 2 * sum(below[:j])
    return x[j - 1], x[n - j], coverage


def compare_levels(rows: Sequence[Row], dim: int = 384) -> List[Comparison]:
    """Each level against the level below it, kernel by kernel, from interleaved rows (their repeats pair by round).

    Verdicts: "same kernel" where both levels run one level's code
    (:func:`code_level`), whatever the clock said; otherwise "slower" where
    the interval of the per-round ratios lies wholly above 1, "faster" where
    wholly below, "within noise" where it holds 1, and "too few rounds" where
    the interval reaches less than the confidence asked (fewer than 5 rounds).
    ``dim``: the dense vectors' dimensions (see :func:`code_level`).
    """
    by_kernel: Dict[str, List[Row]] = {}
    for row in rows:
        by_kernel.setdefault(row.kernel, []).append(row)
    comparisons = []
    for kernel, levels in by_kernel.items():
        for below, row in zip(levels, levels[1:]):
            paired = [a / b for a, b in zip(row.repeats, below.repeats)]
            low, high, coverage = _median_interval(paired)
            code = code_level(kernel, row.isa, dim)
            same = code if code == code_level(kernel, below.isa, dim) else None
            if same is not None:
                verdict = "same kernel"
            elif coverage < _CONFIDENCE:
                verdict = "too few rounds"
            elif low > 1.0:
                verdict = "slower"
            elif high < 1.0:
                verdict = "faster"
            else:
                verdict = "within noise"
            comparisons.append(Comparison(kernel, row.isa, below.isa, row.seconds / below.seconds, low, high,
                                          coverage, same, verdict))
    return comparisons


# ----------------------------------------------------------------------------- kernels


def _sizes(quick: bool, factor: float) -> Dict[str, int]:
    base = {
        "dense_n": 200_000 if quick else 1_000_000,
        "binary_n": 2_000_000 if quick else 8_000_000,
        "dim": 384,
        "batch": 64 if quick else 256,
        "maxsim_docs": 3_000 if quick else 20_000,
        "topk_n": 10_000_000,
    }
    return {k: (v if k == "dim" else max(64, int(v * factor))) for k, v in base.items()}


def _dense_rows(isas, threads, sizes, rounds, rng, progress) -> List[Row]:
    from .dense import DenseIndex

    rows: List[Row] = []
    dim, batch = sizes["dim"], sizes["batch"]
    queries = rng.standard_normal((batch, dim), dtype=np.float32)
    for storage in DENSE_STORAGES:
        n = sizes["binary_n"] if storage == "binary" else sizes["dense_n"]
        index = DenseIndex(dim, storage=storage)
        chunk = 100_000
        for start in range(0, n, chunk):  # in chunks: the f32 source never exists whole
            index.add(rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32))
        row_shape, dtype = dense_code_layout(storage, dim)
        stored = n * int(np.prod(row_shape)) * dtype.itemsize  # the codes a scan reads
        for nq in (1, batch):
            q = queries[:nq]
            times = _interleaved(lambda: index.search(q, k=10), isas, rounds)
            if storage == "binary":
                ops = n * nq * (dim // 64 + (dim % 64 > 0))  # 64-bit popcounts
                compute_bound = "popcount"
            else:
                ops = 2.0 * n * dim * nq
                # int8 scans with s8 queries on the int8 dot, bf16 on the bf16 dot
                # (vdpbf16ps on genoa; the FMA rate below it).
                compute_bound = {"int8": "int8", "bf16": "bf16"}.get(storage, "fma")
            rows += _rows(f"dense {storage} Q={nq}", times, threads, n * nq, "vectors", stored, ops,
                          "bandwidth" if nq == 1 else compute_bound)
            progress.step(rows[-1].kernel)
        del index
    return rows


def _maxsim_rows(isas, threads, sizes, rounds, rng, progress) -> List[Row]:
    from .multivector import MultiVectorIndex

    rows: List[Row] = []
    dim, n_docs, q_tokens = 128, sizes["maxsim_docs"], 32
    lengths = rng.integers(50, 301, n_docs)
    tokens = rng.standard_normal((int(lengths.sum()), dim), dtype=np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    query = rng.standard_normal((q_tokens, dim), dtype=np.float32)
    for storage in MULTIVECTOR_STORAGES:
        index = MultiVectorIndex(dim, storage=storage)
        index.add((tokens, lengths))
        times = _interleaved(lambda: index.search(query, k=10), isas, rounds)
        ops = 2.0 * q_tokens * tokens.shape[0] * dim
        rows += _rows(f"maxsim {storage}", times, threads, n_docs, "docs", index.nbytes, ops,
                      "int8" if storage == "int8" else "fma")
        progress.step(rows[-1].kernel)
        del index
    return rows


#: PLAID's bench index: residual bits and centroids (a small table: the kernel is stage 4, not the centroid scan).
_PLAID_NBITS, _PLAID_CENTROIDS = 2, 256


def _plaid_index(sizes, rng):
    """A PlaidIndex over the MaxSim rows' kind of data: ``maxsim_docs`` documents of 50-300 unit-norm
    128-d tokens, 2 bits, 256 centroids; built once per run (encoding is not what is measured)."""
    from .plaid import PlaidIndex

    lengths = rng.integers(50, 301, sizes["maxsim_docs"])
    tokens = rng.standard_normal((int(lengths.sum()), 128), dtype=np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    index = PlaidIndex(128, nbits=_PLAID_NBITS, ncentroids=_PLAID_CENTROIDS, seed=0)
    index.add((tokens, lengths))
    return index


def _plaid_rows(isas, threads, sizes, rounds, rng, progress) -> List[Row]:
    """PLAID's stage 4 through ``_core.search_plaid``: every document a candidate (every centroid
    probed) and scored (``ncandidates = ndocs = n``), so stage 4 decompresses every token's residual
    codes, 256 tokens at a time into a per-thread block, and runs the MaxSim kernel on them. The figure
    is the stage's own wall-clock time (``exact_s`` of the core's stage timings, not the centroid scan
    before it). Its roof is the float32 FMA rate: 2 * 32 query tokens * 128 flops per token against
    34 bytes of codes and centroid id read, 240 flops a byte, far above the machine balance; the
    decompression (a table look-up per code byte plus the centroid row) is overhead the kernel pays
    against that roof. The codes' bytes per second are reported beside it. The index is built once,
    with the active level (its encoding is not what is measured)."""
    index = _plaid_index(sizes, rng)
    q_tokens = 32
    query = rng.standard_normal((q_tokens, index.dim), dtype=np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    n, n_tokens = len(index), index.num_tokens
    arrays = index.arrays()
    stored = float(arrays["codes"].nbytes + arrays["centroid_ids"].nbytes)

    def stage4() -> float:
        _, _, stats = index.search_stats(query, k=10, nprobe=index.ncentroids, ncandidates=n, ndocs=n)
        if stats["scored"] != n:  # every document must reach stage 4, or the figure is not stage 4's
            raise RuntimeError(f"plaid bench: stage 4 scored {stats['scored']} of {n} documents")
        return stats["exact_s"]

    times = _interleaved(stage4, isas, rounds, own_seconds=True)
    rows = _rows(f"plaid {_PLAID_NBITS}-bit decompress+maxsim", times, threads, n, "docs", stored,
                 2.0 * q_tokens * n_tokens * index.dim, "fma")
    progress.step(rows[-1].kernel)
    return rows


def _pq4_rows(isas, threads, sizes, rounds, rng, progress) -> List[Row]:
    """The 4-bit fast-scan kernel through search_ivf: 4 x dense_n random codes (384 dims, 192
    sub-quantizers: 96 bytes a vector, so the set outgrows the caches as the dense ones do) in 16
    equal lists, every list probed, no rerank. The codes are read once per call whatever the batch
    (the scan is list-major), so both rows are set against bandwidth."""
    dim, m, nlist, batch = sizes["dim"], sizes["dim"] // 2, 16, sizes["batch"]
    n = max(32 * nlist, 4 * sizes["dense_n"] // (32 * nlist) * 32 * nlist)
    # Every byte is a valid pair of 4-bit codes: random packed blocks need no packing.
    codes = rng.integers(0, 256, (n // 32, 16 * m), dtype=np.uint8)
    books = rng.standard_normal((m, 16, dim // m), dtype=np.float32)
    centroids = rng.standard_normal((nlist, dim), dtype=np.float32)
    offsets = np.arange(0, n + 1, n // nlist, dtype=np.int64)
    ids = np.arange(n, dtype=np.int64)
    queries = rng.standard_normal((batch, dim), dtype=np.float32)
    rows: List[Row] = []
    for nq in (1, batch):
        q = queries[:nq]
        times = _interleaved(lambda: _core.search_ivf("pq4", "ip", dim, centroids, offsets, codes, ids, books, None,
                                                      None, None, None, None, None, q, 10, nlist, 0), isas, rounds)
        rows += _rows(f"pq4 fast-scan Q={nq}", times, threads, n * nq, "vectors", codes.nbytes, float(n) * m * nq,
                      "bandwidth")  # operations: 4-bit look-ups
        progress.step(rows[-1].kernel)
    return rows


def _topk_rows(isas, threads, sizes, rounds, rng, progress) -> List[Row]:
    n = sizes["topk_n"]
    scores = rng.standard_normal((1, n), dtype=np.float32)
    times = _interleaved(lambda: _core.topk(scores, 10), isas, rounds)
    rows = _rows(f"top-k k=10 of {n:,}", times, threads, n, "scores", scores.nbytes, 0.0, "bandwidth")
    progress.step(rows[-1].kernel)
    return rows


# (the ceiling's key, the Row field it bounds) for each Row.bound
_BOUNDS = {"bandwidth": ("read_gb_per_s", "gb_per_s"), "fma": ("fma_gflops", "gops"),
           "int8": ("int8_gops", "gops"), "popcount": ("popcount_g_per_s", "gops"),
           "bf16": ("bf16_gflops", "gops")}


def _set_percent_of_ceiling(row: Row, roofs: Dict[str, float]) -> None:
    ceiling, achieved = _BOUNDS[row.bound]
    row.percent_of_ceiling = 100.0 * getattr(row, achieved) / roofs[ceiling]


# ----------------------------------------------------------------------------- the command


def run(quick: bool = False, isa: str = "best", threads: Optional[int] = None, device: str = "cpu",
        json_path: Optional[str] = None, plot_path: Optional[str] = None, progress: bool = True,
        size_factor: float = 1.0, repeats: Optional[int] = None, out=sys.stdout) -> dict:
    """Runs the benchmark and returns (and optionally writes) its report as a dict.

    ``isa``: "best" (the active ISA), "all" (every compiled ISA this CPU runs)
    or one ISA name; ``threads``: core threads (default: the current setting);
    ``repeats``: timed rounds per kernel, each timing every ISA once in a
    rotated order (default 9, 7 with ``quick``; 5 is the fewest whose
    interval reaches 90%, and with some 20 comparisons between levels that
    may well be equal, 5 would call one of them slower by chance about every
    other run: 7 needs every round to agree, a chance of 1/128 each);
    ``size_factor`` scales every data size (tests use tiny
    ones). The report holds "machine", "versions", "settings", "ceilings",
    "ceilings_by_isa", "rows" (one :class:`Row` as a dict per kernel and ISA,
    kernel by kernel) and "comparisons" (one :class:`Comparison` as a dict per
    kernel and ISA above the first, :func:`compare_levels`).
    """
    quick, progress = as_bool(quick, "quick"), as_bool(progress, "progress")
    if threads is not None:
        threads = as_int(threads, "threads", minimum=1)
    if repeats is not None:
        repeats = as_int(repeats, "repeats", minimum=1)
    if not (isinstance(size_factor, (int, float)) and not isinstance(size_factor, bool) and size_factor > 0):
        raise ValueError(f"size_factor: expected a positive number, got {size_factor!r}")
    if device != "cpu":
        from . import cuda as _cuda_module  # noqa: F401 - raises a clear error when CUDA is unavailable

        raise RuntimeError("flatcoat bench --device cuda: run bench/gpu_check.sh on a GPU machine")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    compiled = [name for name in _core.compiled_isas() if _core.cpu_supports(name)]
    if isa == "all":
        isas = compiled
    elif isa == "best":
        isas = [_core.active_isa()]
    elif isa in compiled:
        isas = [isa]
    else:
        raise ValueError(f"--isa: {isa!r} is not usable here; choose one of {', '.join(compiled)} or 'all'")
    threads = threads or _core.num_threads()
    repeats = repeats or (7 if quick else 9)
    sizes = _sizes(quick, size_factor)
    previous_isa, previous_threads = _core.active_isa(), _core.num_threads()
    bar = _Progress(total=1 + 17, enabled=progress)
    rows: List[Row] = []
    try:
        _core.set_num_threads(threads)
        # Short probe loops, many repeats: the best one is the likeliest to have had the cores to itself.
        rounds = max(1000, int((2_000_000 if quick else 10_000_000) * size_factor))
        probe_repeats = max(5, repeats)
        bandwidth_bytes = max(1 << 18, int((256 if quick else 1024) * 2**20 * size_factor))
        ceilings = measure_ceilings(threads, bandwidth_bytes=bandwidth_bytes, rounds=rounds, repeats=probe_repeats)
        # Each ISA's own roofs: its kernels are bounded by its instructions (the memory is everyone's).
        ceilings_by_isa = {
            name: ceilings if name == _core.detected_isa() else
            {"read_gb_per_s": ceilings["read_gb_per_s"], **arithmetic_peaks(threads, rounds, probe_repeats, name)}
            for name in isas}
        bar.step("ceilings")
        rng = np.random.default_rng(0)
        _core.set_active_isa(previous_isa)  # the data is built once, with the active level
        for family in (_dense_rows, _maxsim_rows, _plaid_rows, _pq4_rows, _topk_rows):
            rows += family(isas, threads, sizes, repeats, rng, bar)
            _core.set_active_isa(previous_isa)
            # Memory is shared with whatever else runs: read it again after each family and keep the best.
            ceilings["read_gb_per_s"] = max(ceilings["read_gb_per_s"],
                                            read_bandwidth(bandwidth_bytes, threads, probe_repeats))
        for roofs in ceilings_by_isa.values():
            roofs["read_gb_per_s"] = ceilings["read_gb_per_s"]
        for row in rows:
            _set_percent_of_ceiling(row, ceilings_by_isa[row.isa])
    finally:
        _core.set_active_isa(previous_isa)
        _core.set_num_threads(previous_threads)
        bar.close()
    report = {
        "machine": {
            "cpu": _cpu_model(), "flags": _cpu_flags(), "cores": os.cpu_count(), "platform": platform.platform(),
        },
        "versions": {"flatcoat": _core.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "settings": {"quick": quick, "threads": threads, "repeats": repeats, "isas": isas, "sizes": sizes,
                     "ceiling_isa": _core.detected_isa()},
        "ceilings": ceilings,
        "ceilings_by_isa": ceilings_by_isa,
        "rows": [asdict(r) for r in rows],
        "comparisons": [asdict(c) for c in compare_levels(rows, sizes["dim"])],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print(format_table(report), file=out)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if plot_path:
        plot_roofline(report, plot_path)
    return report


def format_table(report: dict) -> str:
    lines = [f"flatcoat bench on {report['machine']['cpu']} ({report['settings']['threads']} threads)",
             f"memory read {report['ceilings']['read_gb_per_s']:.1f} GB/s; each ISA's arithmetic ceilings, "
             f"with the instructions its kernels use:"]
    for isa, c in report["ceilings_by_isa"].items():
        lines.append(f"  {isa}: float32 FMA {c['fma_gflops']:.1f} GFLOP/s, int8 dot {c['int8_gops']:.1f} GOP/s, "
                     f"popcount {c['popcount_g_per_s']:.2f} G/s, bf16 dot {c['bf16_gflops']:.1f} GFLOP/s")
    lines += [
        "",
        "| kernel | isa | median ms | spread | throughput | GB/s | GOP/s | % of ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['kernel']} | {r['isa']} | {r['seconds'] * 1e3:.2f} | {100 * r['spread']:.0f}% | "
            f"{r['items_per_s']:.3g} {r['item']}/s | {r['gb_per_s']:.1f} | {r['gops']:.1f} | "
            f"{r['percent_of_ceiling']:.0f}% of {r['bound']} |"
        )
    comparisons = report.get("comparisons") or []
    if comparisons:
        lines += [
            "",
            "Each level against the level below, measured interleaved: ratio of the median times (above 1: slower)",
            "and the interval of the per-round ratios' median; slower or faster only when it excludes 1.",
            "",
            "| kernel | isa | vs | ratio | per-round interval | verdict |",
            "|---|---|---|---:|---:|---|",
        ]
        for c in comparisons:
            verdict = c["verdict"]
            if c["same_code_as"] is not None:
                verdict = f"same kernel as {c['same_code_as']}"
            elif verdict == "slower":
                verdict = "**slower**"
            lines.append(f"| {c['kernel']} | {c['isa']} | {c['below']} | {c['ratio']:.3f} | "
                         f"{c['low']:.3f}-{c['high']:.3f} ({100 * c['coverage']:.1f}%) | {verdict} |")
        slower = [c for c in comparisons if c["verdict"] == "slower"]
        lines += ["", "No level slower than the level below beyond the noise on any kernel." if not slower else
                  f"{len(slower)} slower beyond the noise: " +
                  ", ".join(f"{c['kernel']} {c['isa']} ({c['ratio']:.2f}x {c['below']})" for c in slower)]
    return "\n".join(lines)


_FAMILY_COLOURS = {"dense": "tab:blue", "maxsim": "tab:orange", "plaid": "tab:purple", "pq4": "tab:green"}
_STORAGE_MARKERS = {"f32": "o", "f16": "s", "bf16": "v", "int8": "^", "binary": "D", "fast-scan": "P",
                    f"{_PLAID_NBITS}-bit": "X"}
# (ceiling, name, line style, the kernels it bounds)
_ROOF_STYLES = (("fma_gflops", "float32 FMA", "-", "dense f32/f16, maxsim f32/f16, plaid"),
                ("bf16_gflops", "bf16 dot", "-.", "dense bf16 (the FMA rate without vdpbf16ps)"),
                ("int8_gops", "int8 dot", "--", "dense int8 (s8 queries), maxsim int8"),
                ("popcount_g_per_s", "popcount", ":", "dense binary"))


def plot_roofline(report: dict, path: str) -> None:
    """One roofline panel per ISA: operations per byte of stored data against achieved GOP/s.

    Each panel draws that ISA's own roofs (its float32 FMA, int8 dot and
    popcount probes, under the shared memory-bandwidth slope) and its kernels:
    colour by family (dense, maxsim, pq4), marker by storage, hollow for a
    batch; the legend sits outside the panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    roofs_by_isa = report.get("ceilings_by_isa") or {report["settings"]["isas"][0]: report["ceilings"]}
    isas = list(roofs_by_isa)
    points = [r for r in report["rows"] if r["operations"] > 0 and r["bytes_moved"] > 0]
    intensities = [r["operations"] / r["bytes_moved"] for r in points] or [1.0]
    x_lo, x_hi = min(intensities) / 4, max(intensities) * 4
    peaks = [c[key] for c in roofs_by_isa.values() for key, _, _, _ in _ROOF_STYLES]
    y_lo = min([r["gops"] for r in points if r["gops"] > 0] + [x_lo * report["ceilings"]["read_gb_per_s"]]) / 2
    y_hi = max(peaks) * 2
    columns = min(len(isas), 2)
    rows = (len(isas) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns + 2.4, 4.2 * rows), sharex=True, sharey=True,
                             squeeze=False)
    xs = np.logspace(np.log10(x_lo), np.log10(x_hi), 200)
    for ax, isa in zip(axes.flat, isas):
        c = roofs_by_isa[isa]
        for key, label, style, _ in _ROOF_STYLES:
            ax.plot(xs, np.minimum(c[key], xs * c["read_gb_per_s"]), color="0.35", linestyle=style, linewidth=1.2)
            ax.annotate(f"{label} {c[key]:.0f}", (x_hi, c[key]), xytext=(-3, 2), textcoords="offset points",
                        ha="right", va="bottom", fontsize=7, color="0.25")
        for r in (r for r in points if r["isa"] == isa):
            family, rest = r["kernel"].split(" ", 1)
            storage = rest.split(" ")[0]
            colour = _FAMILY_COLOURS.get(family, "tab:gray")
            batch = not r["kernel"].endswith("Q=1") and family not in ("maxsim", "plaid")
            ax.scatter(r["operations"] / r["bytes_moved"], r["gops"], s=36, marker=_STORAGE_MARKERS.get(storage, "x"),
                       facecolors="none" if batch else colour, edgecolors=colour, linewidths=1.3, zorder=3)
        ax.set_title(isa, fontsize=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
    for ax in axes.flat[len(isas):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("operations per byte of stored data")
    for ax in axes[:, 0]:
        ax.set_ylabel("GOP/s (FLOP/s, int8 ops/s, popcounts/s)")
    family_labels = {"pq4": "pq4 (4-bit look-ups; bandwidth roof only)"}
    handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=family_labels.get(family, family))
               for family, colour in _FAMILY_COLOURS.items()]
    handles += [Line2D([], [], color="0.3", marker=marker, linestyle="", label=storage)
                for storage, marker in _STORAGE_MARKERS.items()]
    handles += [Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="", label="batch (Q > 1)"),
                Line2D([], [], color="0.3", marker="o", linestyle="", label="one query")]
    handles += [Line2D([], [], color="0.35", linestyle=style, label=f"{label} roof: {bounds}")
                for _, label, style, bounds in _ROOF_STYLES]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"flatcoat roofline: {report['machine']['cpu']}, {report['settings']['threads']} threads",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
