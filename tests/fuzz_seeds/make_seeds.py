"""Regenerates the loader fuzzing seed corpus: small saved indexes of every kind and storage.

    python tests/fuzz_seeds/make_seeds.py

Each subdirectory is an index directory as ``save`` writes it (manifest.json plus
.npy arrays). They are committed so that the fuzz tests and the atheris harness
start from the same bytes on every machine; rerun this after a format change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import flatcoat

HERE = Path(__file__).resolve().parent


def dense_seeds():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    ids = np.arange(12, dtype=np.int64) * 3 + 1
    for storage, metric, keep_float in [("f32", "ip", False), ("f16", "cosine", False),
                                        ("int8", "l2", True), ("binary", "ip", True)]:
        index = flatcoat.DenseIndex(5, metric=metric, storage=storage, keep_float=keep_float)
        index.add(x, ids=ids)
        index.remove([4])
        yield f"dense_{storage}_{metric}", index
    yield "dense_f32_empty", flatcoat.DenseIndex(3, metric="l2", storage="f32")


def multivector_seeds():
    rng = np.random.default_rng(8)
    docs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 1, 5, 2, 4)]
    for storage in ("f32", "f16", "int8"):
        index = flatcoat.MultiVectorIndex(4, storage=storage)
        index.add(docs, ids=[9, 2, 40, 7, 11])
        index.remove([40])
        yield f"multivector_{storage}", index
    yield "multivector_empty", flatcoat.MultiVectorIndex(6)


def main() -> None:
    for name, index in [*dense_seeds(), *multivector_seeds()]:
        path = HERE / name
        if path.exists():
            shutil.rmtree(path)
        index.save(path)
        print(name, sum(p.stat().st_size for p in path.iterdir()), "bytes")


if __name__ == "__main__":
    main()
