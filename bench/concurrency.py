"""Searches from 1 vs 2 Python threads: does the GIL get released?

    python bench/concurrency.py [--seconds 3]

``flatcoat.set_num_threads(1)`` makes every call single-threaded in the core,
so any speed-up from a second Python thread comes from two calls running at
once, i.e. from the bindings releasing the GIL for the whole scan. The
indexes are sized to stay in the L3 cache (a Q=1 scan of a large index is
bound by DRAM bandwidth, which a second core does not raise on this machine;
docs/reliability.md). Each configuration runs for ``--seconds`` with 1 thread
and then with 2, counting completed searches; the table gives searches/s and
the ratio (2.0 is perfect scaling, 1.0 means the calls were serialized).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

import flatcoat


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def configurations(rng):
    """(name, search callable) pairs."""
    out = []
    for storage, n in (("f32", 20_000), ("int8", 50_000)):
        index = flatcoat.DenseIndex(128, metric="ip", storage=storage)
        index.add(_unit(rng, n, 128))
        q1, q16 = _unit(rng, 1, 128), _unit(rng, 16, 128)
        out.append((f"dense {storage} n={n} d=128, 1 query", lambda index=index, q=q1: index.search(q, k=10)))
        out.append((f"dense {storage} n={n} d=128, 16 queries", lambda index=index, q=q16: index.search(q, k=10)))
    mv = flatcoat.MultiVectorIndex(128, storage="f32")
    lengths = rng.integers(20, 60, 1000)
    mv.add((_unit(rng, int(lengths.sum()), 128), lengths))
    query = _unit(rng, 32, 128)
    out.append(("maxsim f32 1000 docs x ~40 tok, 32-token query", lambda: mv.search(query, k=10)))
    return out


def throughput(search, threads: int, seconds: float) -> float:
    counts = [0] * threads
    stop = threading.Event()
    start_line = threading.Barrier(threads + 1)

    def worker(slot):
        start_line.wait()
        while not stop.is_set():
            search()
            counts[slot] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start_line.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    flatcoat.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"flatcoat {flatcoat.__version__}, isa {flatcoat.info()['isa']}, core threads per call: {flatcoat.get_num_threads()}, "
          f"hardware threads: {flatcoat.info()['hardware_threads']}, load average: {os.getloadavg()[0]:.1f} "
          "(a busy machine leaves no second core to gain)")
    print(f"| {'configuration':<48} | {'1 thread /s':>11} | {'2 threads /s':>12} | {'ratio':>5} |")
    print(f"|{'-' * 50}|{'-' * 13}|{'-' * 14}|{'-' * 7}|")
    for name, search in configurations(rng):
        search()  # warm up
        one = throughput(search, 1, args.seconds)
        two = throughput(search, 2, args.seconds)
        print(f"| {name:<48} | {one:>11.0f} | {two:>12.0f} | {two / one:>5.2f} |", flush=True)


if __name__ == "__main__":
    main()
