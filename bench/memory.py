"""Memory: the peak while adding in batches, and resident memory of mmap loads.

    python bench/memory.py [--scale 1.0]

1. Adding N vectors (or documents) in batches, each configuration in a fresh
   subprocess: the batches are generated one at a time from a fixed seed, so
   the process holds the index plus one batch. Reported: the final index bytes
   (``index.nbytes``), the bytes of one batch as passed to ``add`` (float32),
   and the peak RSS growth (``resource.getrusage(RUSAGE_SELF).ru_maxrss``
   after the adds minus its value before the first batch). "excess" is the
   peak minus (index + one batch): what the adds cost beyond the data itself.
2. Loading a saved index with ``mmap=True`` (and, for contrast, ``mmap=False``)
   in a fresh subprocess: VmRSS (from /proc/self/status) before the load,
   after it, and after one search (which touches every page once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import flatcoat

ADD_SCRIPT = r"""
import json, resource, sys
import numpy as np
import flatcoat

kind, storage, dim, n, batch, extra = sys.argv[1:7]
dim, n, batch = int(dim), int(n), int(batch)
rng = np.random.default_rng(0)

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

if kind == "dense":
    index = flatcoat.DenseIndex(dim, metric="ip", storage=storage, keep_float=extra == "keep_float")
    make = lambda m: rng.standard_normal((m, dim), dtype=np.float32)
    sample = make(8)
else:
    index = flatcoat.MultiVectorIndex(dim, storage=storage)
    tokens_per_doc = int(extra)
    make = lambda m: (rng.standard_normal((m * tokens_per_doc, dim), dtype=np.float32), np.full(m, tokens_per_doc))
    sample = make(2)
    index.search(sample[0][:4], k=1)
index.add(sample) if kind == "dense" else None  # warm up: thread pool, code paths
if kind == "dense":
    index.remove(index.ids)
batch_bytes = batch * dim * 4 * (1 if kind == "dense" else tokens_per_doc)
before = peak()
for start in range(0, n, batch):
    index.add(make(min(batch, n - start)))
after = peak()
print(json.dumps({"index_bytes": index.nbytes, "batch_bytes": batch_bytes, "peak_delta": after - before}))
"""

LOAD_SCRIPT = r"""
import json, sys
import numpy as np
import flatcoat

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

path, mmap, verify, dim = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
q = np.ones((1, dim), dtype=np.float32)
tiny = flatcoat.DenseIndex(dim)
tiny.add(q)
tiny.search(q, k=1)  # warm up the core (thread pool) outside the measurement
before = rss()
index = flatcoat.load(path, mmap=mmap, verify=verify)
loaded = rss()
index.search(q, k=10)
searched = rss()
print(json.dumps({"before": before, "loaded": loaded, "searched": searched, "index_bytes": index.nbytes}))
"""


def run(script, *args):
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(b):
    return f"{b / 2**20:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every N")
    args = parser.parse_args()
    s = args.scale
    adds = [
        ("dense", "f32", 384, int(200_000 * s), 10_000, "-"),
        ("dense", "f16", 384, int(200_000 * s), 10_000, "-"),
        ("dense", "int8", 384, int(200_000 * s), 10_000, "-"),
        ("dense", "binary", 384, int(200_000 * s), 10_000, "keep_float"),
        ("dense", "f32", 384, int(200_000 * s), 50_000, "-"),
        ("multivector", "f32", 128, int(20_000 * s), 1_000, "32"),
        ("multivector", "int8", 128, int(20_000 * s), 1_000, "32"),
    ]
    print("Adding in batches (peak RSS growth from ru_maxrss, fresh process per row; MiB)")
    print(f"| {'index':<34} | {'N':>8} | {'batch':>6} | {'index MiB':>9} | {'batch MiB':>9} | {'peak delta':>10} | {'excess':>7} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 12}|{'-' * 9}|")
    for kind, storage, dim, n, batch, extra in adds:
        r = run(ADD_SCRIPT, kind, storage, dim, n, batch, extra)
        name = f"{kind} {storage} d={dim}" + (" keep_float" if extra == "keep_float" else "") + (f" {extra} tok/doc" if kind == "multivector" else "")
        excess = r["peak_delta"] - r["index_bytes"] - r["batch_bytes"]
        print(f"| {name:<34} | {n:>8,} | {batch:>6,} | {mib(r['index_bytes']):>9} | {mib(r['batch_bytes']):>9} | "
              f"{mib(r['peak_delta']):>10} | {mib(excess):>7} |", flush=True)

    print()
    print("Loading a saved index (VmRSS, fresh process per row; MiB)")
    n, dim = int(200_000 * s), 384
    with tempfile.TemporaryDirectory() as tmp:
        index = flatcoat.DenseIndex(dim, storage="f32")
        rng = np.random.default_rng(1)
        for start in range(0, n, 20_000):
            index.add(rng.standard_normal((min(20_000, n - start), dim), dtype=np.float32))
        path = os.path.join(tmp, "idx")
        index.save(path)
        del index
        print(f"| {'load':<28} | {'index MiB':>9} | {'before':>8} | {'after load':>10} | {'after search':>12} |")
        print(f"|{'-' * 30}|{'-' * 11}|{'-' * 10}|{'-' * 12}|{'-' * 14}|")
        for mmap, verify in ((True, False), (True, True), (False, True)):
            r = run(LOAD_SCRIPT, path, int(mmap), int(verify), dim)
            name = f"mmap={mmap}, verify={verify}"
            print(f"| {name:<28} | {mib(r['index_bytes']):>9} | {mib(r['before']):>8} | {mib(r['loaded'] - r['before']):>10} | "
                  f"{mib(r['searched'] - r['before']):>12} |", flush=True)
        print("(after load / after search: growth over 'before')")


if __name__ == "__main__":
    main()
