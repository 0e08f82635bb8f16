"""Real embeddings for benchmarks: SciFact encoded by the bundled all-MiniLM-L6-v2.

Builds, once, and caches outside the repository (``$FLATCOAT_BENCH_CACHE``,
default ``~/.cache/flatcoat-bench``):

* ``docs.npy``: (5183, 384) float32 dense document vectors (mean pooled,
  unit norm), and ``queries.npy``: the judged test queries' vectors;
* ``tokens.npy``: every document's per-token vectors (the multi-vector
  stand-in encoder: about 1.24 million unit-norm 384-d rows), with
  ``token_lengths.npy`` (tokens per document);
* ``query_tokens.npy``: the test queries' per-token vectors.

Encoding takes about 5-10 minutes on 2 cores. Everything later reads the
cache (memory-mapped). Use with the installed package::

    python bench/scifact_vectors.py            # build (or check) the cache
    python -c "from bench.scifact_vectors import load; print(load()['tokens'].shape)"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
_FILES = ("docs", "queries", "tokens", "token_lengths", "query_tokens")


def cache_dir() -> Path:
    root = Path(os.environ.get("FLATCOAT_BENCH_CACHE", Path.home() / ".cache" / "flatcoat-bench"))
    return root / "scifact-minilm"


def _complete(directory: Path) -> bool:
    return (directory / "done.json").is_file() and all((directory / f"{name}.npy").is_file() for name in _FILES)


def _save(directory: Path, name: str, array: np.ndarray) -> None:
    tmp = directory / f".{name}.tmp.npy"
    np.save(tmp, np.ascontiguousarray(array))
    os.replace(tmp, directory / f"{name}.npy")


def build(data: Path = DATA, batch_size: int = 32) -> Path:
    """Encodes SciFact into the cache (skipped when complete); returns the cache directory."""
    import flatcoat
    from flatcoat.eval import doc_text, load_beir

    directory = cache_dir()
    if _complete(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    corpus, queries, _ = load_beir(data, "test")
    texts = [doc_text(d) for d in corpus.values()]
    query_texts = list(queries.values())
    started = time.perf_counter()
    dense = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2", progress=True)
    _save(directory, "docs", dense.encode_documents(texts, batch_size=batch_size))
    _save(directory, "queries", dense.encode_queries(query_texts, batch_size=batch_size))
    tokens = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector", progress=True)
    doc_tokens = tokens.encode_documents(texts, batch_size=batch_size)
    _save(directory, "token_lengths", np.array([t.shape[0] for t in doc_tokens], dtype=np.int64))
    _save(directory, "tokens", np.concatenate(doc_tokens))
    del doc_tokens
    _save(directory, "query_tokens", np.concatenate(tokens.encode_queries(query_texts, batch_size=batch_size)))
    (directory / "done.json").write_text(json.dumps({
        "model": "all-MiniLM-L6-v2", "data": str(data), "flatcoat": flatcoat.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }))
    return directory


def load(mmap: bool = True) -> Dict[str, np.ndarray]:
    """The cached arrays by name (memory-mapped read-only by default); builds them if missing."""
    directory = build()
    return {name: np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None) for name in _FILES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the SciFact BEIR directory")
    args = parser.parse_args()
    directory = build(args.data)
    arrays = load()
    for name, a in arrays.items():
        print(f"{name}: {a.dtype} {a.shape}")
    print(f"cache: {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
