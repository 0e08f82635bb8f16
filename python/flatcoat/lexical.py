"""BM25, the lexical reference of ``flatcoat eval --bm25``, on bm25s.

bm25s (``pip install 'flatcoat[eval]'``) with its defaults: the Lucene
variant, k1 = 1.5, b = 0.75, English stopwords, no stemming. Results follow
the search rule of the indexes: ``(scores, ids)`` of shape ``(q, k')``,
``k' = min(k, n_documents)``, best first, ties broken by the smaller id, where
an id is a document's position in the texts given to :class:`BM25`.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from ._validate import as_k

__all__ = ["BM25"]


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise ImportError("BM25 needs bm25s: pip install 'flatcoat[eval]'") from None
    return bm25s


class BM25:
    """A BM25 index over ``texts`` (a sequence of n strings; ids are positions 0..n-1).

    >>> bm25 = BM25(["read a csv file", "copy a directory tree"])  # doctest: +SKIP
    >>> bm25.search(["copy a folder"], k=1)[1]                      # doctest: +SKIP
    array([[1]])
    """

    def __init__(self, texts: Sequence[str]):
        if isinstance(texts, str) or not len(texts):
            raise ValueError("texts: expected a non-empty list of document strings")
        self._bm25s = _bm25s()
        self._n = len(texts)
        self._model = self._bm25s.BM25()
        self._model.index(self._bm25s.tokenize(list(texts), stopwords="en", show_progress=False),
                          show_progress=False)

    def __len__(self) -> int:
        return self._n

    def search(self, queries: Sequence[str], k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        """``(scores float32 (q, k'), ids int64 (q, k'))`` for a list of q query strings."""
        k = min(as_k(k), self._n)
        if isinstance(queries, str):
            raise TypeError("queries: expected a list of query strings; wrap one query in a list")
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
        ids, scores = self._model.retrieve(tokens, k=k, show_progress=False)
        ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        # bm25s leaves the order of equal scores unspecified: best first, then the smaller id.
        order = np.lexsort((ids, -scores), axis=1)
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
