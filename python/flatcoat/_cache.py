"""An on-disk cache of encoder outputs, so repeated evaluations encode a collection once.

One entry per (model name, encoder kind and configuration, side, texts): a
directory named by a hash of all of them, holding ``vectors.npy`` (dense:
``(n, dim)``; multi-vector: every token row, ``(total, dim)``) and, for a
multi-vector encoder, ``lengths.npy`` (``(n,)`` tokens per text). Files are
written to a temporary name and renamed, so an interrupted write leaves no
entry that reads back wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

Output = Union[np.ndarray, List[np.ndarray]]


class EmbeddingCache:
    """Encoder outputs under ``directory`` (created on the first :meth:`put`)."""

    def __init__(self, directory: "str | os.PathLike[str]"):
        self.directory = Path(directory)

    def _entry(self, encoder, texts: List[str], side: str) -> Path:
        config = dataclasses.asdict(encoder.config)
        texts_hash = hashlib.sha1("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest()
        key = json.dumps([encoder.name, encoder.kind, config, side, len(texts), texts_hash], sort_keys=True, default=str)
        return self.directory / hashlib.sha1(key.encode()).hexdigest()[:20]

    def get(self, encoder, texts: List[str], side: str) -> Optional[Output]:
        """The cached output of ``encoder`` for ``texts`` on ``side`` ("document" or "query"), or None."""
        entry = self._entry(encoder, texts, side)
        if not (entry / "vectors.npy").is_file():
            return None
        flat = np.load(entry / "vectors.npy")
        if encoder.kind == "dense":
            return flat
        lengths = np.load(entry / "lengths.npy")
        return np.split(flat, np.cumsum(lengths)[:-1])

    def put(self, encoder, texts: List[str], side: str, output: Output) -> None:
        """Stores ``output`` (what :meth:`get` returns) for ``encoder``, ``texts`` and ``side``."""
        entry = self._entry(encoder, texts, side)
        entry.mkdir(parents=True, exist_ok=True)
        if encoder.kind != "dense":
            _save(entry / "lengths.npy", np.array([len(x) for x in output], dtype=np.int64))
            output = np.concatenate(output)
        _save(entry / "vectors.npy", output)  # last: its presence marks a complete entry


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
