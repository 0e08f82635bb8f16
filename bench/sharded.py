"""ShardedIndex on Ray against one local DenseIndex: scatter-gather overhead and the time to recover a shard.

One machine, a local Ray cluster of ``--cpus`` CPUs (2 by default) on loopback,
``--shards`` shard actors (2), f32 inner product, k = 10. Data: ``bench.datasets.clustered(n, 384)``
(1,000,000 by default, 200,000 with ``--quick``) and 256 queries of the same
distribution.

Measured, for the local index and for the sharded one (default core threads
in every actor, then ``threads=1`` per actor so the shards do not time-slice
each other's cores):

* Q = 1: p50 and p99 over ``--q1`` single-query calls;
* Q = 256: the median of ``--repeats`` calls of the whole batch (queries/s);
* the overhead: sharded p50 minus local p50 (Q = 1) and the same for the batch;
* that both answer the same ids and scores (exact search: they must).

Recovery (on the default-threads sharded index): it is saved (time reported),
then, ``--kills`` times, shard 0's actor is killed (``ray.kill(...,
no_restart=False)``) and searched in a loop from the kill to the first
successful search: Ray restarts the actor, which reloads its shard from the
save (mmap, checksums verified), and the search retries until it answers.

Usage::

    flock /tmp/fc-cpu.lock python bench/sharded.py            # 1,000,000 x 384
    python bench/sharded.py --quick                           # 200,000 x 384
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.datasets import clustered  # noqa: E402

import flatcoat  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def latency(search, queries, n: int):
    times = []
    for i in range(n):
        t = time.perf_counter()
        search(queries[i % len(queries)])
        times.append(time.perf_counter() - t)
    times = np.array(times) * 1e3
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def batch(search, queries, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        search(queries)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure(name, index, queries, args):
    search = lambda q: index.search(q, k=10)  # noqa: E731
    search(queries[:4])  # warm-up
    p50, p99 = latency(search, queries, args.q1)
    seconds = batch(search, queries, args.repeats)
    return {"name": name, "p50": p50, "p99": p99, "batch_s": seconds, "qps": len(queries) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 vectors")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--q1", type=int, default=100, help="single-query calls per index")
    parser.add_argument("--repeats", type=int, default=5, help="Q = 256 calls per index")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to save the sharded index (default: a temporary directory)")
    args = parser.parse_args()
    n = 200_000 if args.quick else args.n
    import ray

    from flatcoat.distributed import ShardedIndex

    print(f"# bench/sharded.py: {n:,} x {args.dim} f32, {args.shards} shards, {args.cpus} CPUs, k = 10")
    print(f"date {datetime.date.today()}, commit {commit()}, CPU {cpu_model()}, os.cpu_count() {os.cpu_count()}, "
          f"ray {ray.__version__}, flatcoat threads {flatcoat.get_num_threads()}")
    t = time.perf_counter()
    base, queries = clustered(n, args.dim, n_queries=256, seed=0)
    print(f"data: {time.perf_counter() - t:.1f} s")

    rows = []
    local = flatcoat.DenseIndex(args.dim)
    t = time.perf_counter()
    local.add(base)
    print(f"local add: {time.perf_counter() - t:.1f} s")
    rows.append(measure("local DenseIndex", local, queries, args))
    expected = local.search(queries, k=10)

    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init: {time.perf_counter() - t:.1f} s")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="fc-sharded-"))
    recovery = []
    save_s = None
    try:
        for threads in (None, 1):
            label = f"ShardedIndex, {args.shards} shards" + (", threads=1 each" if threads else "")
            t = time.perf_counter()
            sharded = ShardedIndex(args.dim, shards=args.shards, threads=threads, timeout=120)
            start_s = time.perf_counter() - t
            t = time.perf_counter()
            sharded.add(base)
            print(f"{label}: actors started in {start_s:.1f} s, add {time.perf_counter() - t:.1f} s")
            row = measure(label, sharded, queries, args)
            got = sharded.search(queries, k=10)
            row["equal"] = bool(np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0]))
            rows.append(row)
            if threads is None:
                path = work / "sharded"
                t = time.perf_counter()
                sharded.save(path)
                save_s = time.perf_counter() - t
                q = queries[:1]
                for _ in range(args.kills):
                    t = time.perf_counter()
                    ray.kill(sharded.actors[0], no_restart=False)
                    tries = 0
                    while True:
                        tries += 1
                        try:
                            result = sharded.search(q, k=10, timeout=120)
                            break
                        except Exception as exc:  # a timeout would be reported, never a silent partial result
                            print(f"  search after the kill failed ({type(exc).__name__}: {exc}); retrying")
                    recovery.append(time.perf_counter() - t)
                    assert np.array_equal(result[1], expected[1][:1]), "recovered shard answers differently"
            sharded.close()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()

    local_row = rows[0]
    print()
    print("| index | Q=1 p50 (ms) | Q=1 p99 (ms) | Q=1 overhead p50 (ms) | Q=256 (ms) | Q=256 queries/s "
          "| Q=256 overhead (ms) | same results |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        over1 = "" if row is local_row else f"{row['p50'] - local_row['p50']:+.2f}"
        overb = "" if row is local_row else f"{(row['batch_s'] - local_row['batch_s']) * 1e3:+.1f}"
        same = "" if row is local_row else ("yes" if row["equal"] else "NO")
        print(f"| {row['name']} | {row['p50']:.2f} | {row['p99']:.2f} | {over1} | {row['batch_s'] * 1e3:.1f} | "
              f"{row['qps']:.0f} | {overb} | {same} |")
    print()
    print(f"save ({args.shards} shards, {n:,} x {args.dim} f32): {save_s:.1f} s")
    print("| recovery of a killed shard (kill -> first successful search) | median (s) | min (s) | max (s) |")
    print("|---|---:|---:|---:|")
    print(f"| shard 0 of {args.shards}, {n // args.shards:,} vectors, reloaded from its save (mmap, verified), "
          f"{len(recovery)} kills | {np.median(recovery):.2f} | {min(recovery):.2f} | {max(recovery):.2f} |")


if __name__ == "__main__":
    main()
