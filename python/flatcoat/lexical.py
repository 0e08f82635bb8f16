"""BM25, the lexical stage of the Retriever and the reference of ``flatcoat eval --bm25``, on bm25s.

bm25s (``pip install 'flatcoat[eval]'``, which brings PyStemmer) builds the
index: the Lucene variant, k1 = 1.5, b = 0.75, English stopwords, and by
default the English Snowball stemmer (PyStemmer), applied the same way to
documents and queries (``stemmer=None``: no stemming). bm25s precomputes each
(token, document) score; flatcoat keeps that matrix token-major (bm25s's CSC
layout: ``indptr`` over the vocabulary, ``indices`` the document positions,
``data`` the scores) and searches it itself, vectorised over a batch of
queries: a query's score for a document is the sum over its tokens (repeated
tokens count again, as in bm25s) of that document's precomputed score.

Results follow the search rule of the indexes: ``(scores, ids)`` of shape
``(q, k')``, ``k' = min(k, n_documents)``, best first, ties broken by the
smaller id, where an id is a document's position in the texts given to
:class:`BM25`. Every allowed document takes part: one that shares no token with
the query scores 0, so a query with no known token returns the first ``k'``
allowed documents by position, all with score 0 (:func:`matched` turns those
into padding). Only a restriction (``allowed=``) leaves fewer than ``k'``
candidates; the row is then padded with id -1 and score -inf.

:meth:`BM25.save` writes a flatcoat directory (kind ``"bm25"``: the three
arrays, the vocabulary, the settings; staged, fsynced, CRC-32, atomic) that
``flatcoat.load`` opens (arrays memory-mapped) and searches identically.
"""

from __future__ import annotations

import numbers
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ._persist import IndexFormatError, register_opener, write_directory
from ._validate import as_k

__all__ = ["BM25", "matched"]

_KIND = "bm25"
_METHODS = ("lucene", "robertson", "atire")  # the variants without a non-occurrence term (bm25l, bm25+ have one)
_CHUNK = 1 << 22  # scores held at once while searching: queries per batch = _CHUNK // n


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise ImportError("BM25 needs bm25s: pip install 'flatcoat[eval]'") from None
    return bm25s


def _stemmer(name: Optional[str]):
    """PyStemmer's Snowball stemmer for language ``name``; None for no stemming."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"stemmer: expected a language name such as 'english', or None, got {type(name).__name__}")
    try:
        import Stemmer
    except ImportError:
        raise ImportError("stemmer: stemming needs PyStemmer: pip install 'flatcoat[eval]' (or PyStemmer), "
                          "or pass stemmer=None") from None
    if name not in Stemmer.algorithms():
        raise ValueError(f"stemmer: unknown language {name!r}; PyStemmer has {', '.join(Stemmer.algorithms())}")
    return Stemmer.Stemmer(name)


def _as_stopwords(stopwords):
    if stopwords is None or stopwords in ("en", "english"):
        return None if stopwords is None else "en"
    if isinstance(stopwords, str) or not isinstance(stopwords, Sequence) or not all(isinstance(w, str) for w in stopwords):
        raise TypeError("stopwords: expected 'en' (bm25s's English list), a list of words, or None")
    return sorted(set(stopwords))


def _as_texts(texts, name: str) -> List[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name}: expected a list of strings; wrap one string in a list")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{name}: expected a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}: item {i} is {type(t).__name__}, expected a string")
    return texts


def _positive(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number at least 0, got {value!r}")
    return float(value)


def matched(scores: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Copies of a BM25 result where documents that share no token with the query (score 0) are padding
    (id -1, score -inf): the lexical list to fuse (:mod:`flatcoat.fusion`), without arbitrary zero-score
    documents. BM25 scores of matching documents are positive (the idf of every variant here is)."""
    scores, ids = np.array(scores, dtype=np.float32), np.array(ids, dtype=np.int64)
    miss = ~(scores > 0)
    scores[miss], ids[miss] = -np.inf, -1
    return scores, ids


class BM25:
    """A BM25 index over ``texts`` (a sequence of n strings; ids are positions 0..n-1).

    ``stemmer``: a PyStemmer language (default ``"english"``) or None;
    ``stopwords``: ``"en"`` (bm25s's English list), a list of words, or None;
    ``k1``, ``b``: the BM25 parameters; ``method``: ``"lucene"`` (default),
    ``"robertson"`` or ``"atire"`` (bm25s's names). The index is immutable.

    >>> bm25 = BM25(["read a csv file", "copy a directory tree"])  # doctest: +SKIP
    >>> bm25.search(["copy a folder"], k=1)[1]                      # doctest: +SKIP
    array([[1]])
    """

    def __init__(self, texts: Sequence[str], *, stemmer: Optional[str] = "english", stopwords="en",
                 k1: float = 1.5, b: float = 0.75, method: str = "lucene"):
        texts = _as_texts(texts, "texts")
        if not texts:
            raise ValueError("texts: expected a non-empty list of document strings")
        if not isinstance(method, str) or method not in _METHODS:
            raise ValueError(f"method: expected one of {', '.join(map(repr, _METHODS))}, got {method!r}")
        self._settings = {"stemmer": stemmer, "stopwords": _as_stopwords(stopwords), "k1": _positive(k1, "k1"),
                          "b": _positive(b, "b"), "method": method}
        bm25s = _bm25s()
        self._stem = _stemmer(stemmer)
        self._n = len(texts)
        tokens = bm25s.tokenize(texts, stopwords=self._settings["stopwords"], stemmer=self._stem,
                                show_progress=False, return_ids=True)
        if not tokens.vocab:  # every document is empty or stopwords: no token can match
            data, indices, indptr, vocab = np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(1, np.int64), []
        else:
            model = bm25s.BM25(k1=self._settings["k1"], b=self._settings["b"], method=method)
            model.index(tokens, show_progress=False, create_empty_token=False)
            data, indices, indptr = (model.scores[key] for key in ("data", "indices", "indptr"))
            vocab = [None] * (len(indptr) - 1)
            for token, column in tokens.vocab.items():
                vocab[column] = token
        self._set_arrays(np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int64),
                         vocab)

    def _set_arrays(self, data, indices, indptr, vocab: List[str]) -> None:
        self._data, self._indices, self._indptr = data, indices, indptr
        self._vocab = vocab
        self._columns = {token: i for i, token in enumerate(vocab)}

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        s = self._settings
        return (f"BM25({self._n} documents, {len(self._vocab)} tokens, stemmer={s['stemmer']!r}, "
                f"k1={s['k1']}, b={s['b']}, method={s['method']!r})")

    @property
    def settings(self) -> dict:
        """``{"stemmer", "stopwords", "k1", "b", "method"}`` as built (and saved)."""
        return dict(self._settings)

    def _tokenize(self, queries: List[str]) -> List[List[int]]:
        """Query token columns, through the documents' tokenizer (unknown tokens dropped, repeats kept)."""
        tokens = _bm25s().tokenize(queries, stopwords=self._settings["stopwords"], stemmer=self._stem,
                                   show_progress=False, return_ids=False)
        columns = self._columns
        return [[columns[t] for t in query if t in columns] for query in tokens]

    def _scores(self, columns: List[List[int]]) -> np.ndarray:
        """``(len(columns), n)`` float64 scores: every query's postings gathered and summed in one bincount."""
        n, nq = self._n, len(columns)
        counts = np.fromiter((len(c) for c in columns), np.int64, nq)
        cols = np.fromiter((t for c in columns for t in c), np.int64, int(counts.sum()))
        rows = np.repeat(np.arange(nq, dtype=np.int64), counts)
        starts, lengths = self._indptr[cols], self._indptr[cols + 1] - self._indptr[cols]
        total = int(lengths.sum())
        # Flat positions of every posting of every query token: start of its list + offset within it.
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.repeat(starts, lengths) + offsets
        keys = np.repeat(rows, lengths) * n + self._indices[flat]
        return np.bincount(keys, weights=self._data[flat], minlength=nq * n).reshape(nq, n)

    def search(self, queries: Sequence[str], k: int = 10, *, allowed=None) -> Tuple[np.ndarray, np.ndarray]:
        """``(scores float32 (q, k'), ids int64 (q, k'))`` for a list of q query strings, ``k' = min(k, n)``.

        ``allowed``: None, or a boolean mask of shape ``(n,)`` over the
        document positions; masked documents never appear, and a row with
        fewer than ``k'`` allowed documents is padded with id -1, score -inf.
        """
        k = min(as_k(k), self._n)
        queries = _as_texts(queries, "queries")
        mask = None
        if allowed is not None:
            mask = np.asarray(allowed)
            if mask.dtype != np.bool_:
                raise TypeError(f"allowed: expected a boolean mask over the {self._n} documents, got dtype {mask.dtype}")
            if mask.shape != (self._n,):
                raise ValueError(f"allowed: expected shape ({self._n},), one flag per document, got {mask.shape}")
        out_scores = np.empty((len(queries), k), np.float32)
        out_ids = np.empty((len(queries), k), np.int64)
        step = max(1, _CHUNK // self._n)
        for lo in range(0, len(queries), step):
            scores = self._scores(self._tokenize(queries[lo:lo + step]))
            if mask is not None:
                scores[:, ~mask] = -np.inf
            out_scores[lo:lo + step], out_ids[lo:lo + step] = _top_k(scores, k)
        return out_scores, out_ids

    # ------------------------------------------------------------------ persistence

    def save(self, path) -> None:
        """Writes the index to directory ``path`` atomically (kind ``"bm25"``; ``flatcoat.load`` opens it)."""
        meta = {"documents": self._n, "tokens": len(self._vocab), **self._settings}

        def fill(writer) -> None:
            writer.add_array("data", self._data)
            writer.add_array("indices", self._indices)
            writer.add_array("indptr", self._indptr)
            writer.add_json("vocabulary", list(self._vocab))

        write_directory(os.fspath(path), _KIND, meta, fill)

    @classmethod
    def _open(cls, saved, *, mmap: bool, verify: bool, device: str = "cpu") -> "BM25":
        """Opens a verified ``"bm25"`` directory (the lexical stage runs on the CPU whatever ``device``)."""
        where = saved.path
        meta, arrays, docs = saved.meta, saved.arrays, saved.documents
        try:
            n, n_tokens = meta["documents"], meta["tokens"]
            settings = {key: meta[key] for key in ("stemmer", "stopwords", "k1", "b", "method")}
            data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
            vocab = docs["vocabulary"]
        except KeyError as exc:
            raise IndexFormatError(f"{where}: a bm25 directory without {exc}") from None
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(n_tokens, int) or n_tokens < 0:
            raise IndexFormatError(f"{where}: invalid documents {n!r} or tokens {n_tokens!r} in the manifest")
        if data.dtype != np.float32 or indices.dtype != np.int32 or indptr.dtype != np.int64 or \
                data.ndim != 1 or indices.shape != data.shape or indptr.shape != (n_tokens + 1,):
            raise IndexFormatError(f"{where}: data, indices, indptr must be float32 and int32 of one length and "
                                   f"int64 of length tokens + 1 = {n_tokens + 1}")
        if indptr[0] != 0 or indptr[-1] != data.size or np.any(np.diff(indptr) < 0):
            raise IndexFormatError(f"{where}: indptr.npy is not a non-decreasing list of offsets from 0 to "
                                   f"{data.size}")
        if data.size and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise IndexFormatError(f"{where}: indices.npy holds a document position outside 0..{n - 1}")
        if data.size and not (np.isfinite(data).all() and (data >= 0).all()):
            raise IndexFormatError(f"{where}: data.npy holds a negative or non-finite score")
        if not isinstance(vocab, list) or len(vocab) != n_tokens or not all(isinstance(t, str) for t in vocab) \
                or len(set(vocab)) != n_tokens:
            raise IndexFormatError(f"{where}: vocabulary.json must list {n_tokens} distinct tokens")
        try:
            self = cls.__new__(cls)
            self._settings = {"stemmer": settings["stemmer"], "stopwords": _as_stopwords(settings["stopwords"]),
                              "k1": _positive(settings["k1"], "k1"), "b": _positive(settings["b"], "b"),
                              "method": settings["method"]}
            if self._settings["method"] not in _METHODS:
                raise ValueError(f"method: unknown {settings['method']!r}")
            self._stem = _stemmer(settings["stemmer"])
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{where}: invalid settings in the manifest ({exc})") from None
        self._n = n
        self._set_arrays(data, indices, indptr, vocab)
        return self


def _top_k(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores`` (q, n) float64, best first, ties by the smaller
    column; -inf entries (masked) come back as id -1."""
    q, n = scores.shape
    if k < n:
        # The k-th best value of each row; everything above it, then the first columns equal to it.
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
        above = scores > kth
        need = k - above.sum(axis=1, keepdims=True)
        ties = scores == kth
        take = above | (ties & (np.cumsum(ties, axis=1) <= need))
        cols = np.nonzero(take)[1].reshape(q, k)  # row-major: exactly k per row, in column order
    else:
        cols = np.broadcast_to(np.arange(n), (q, n))
    picked = np.take_along_axis(scores, cols, 1)
    order = np.lexsort((cols, -picked), axis=1)
    picked, cols = np.take_along_axis(picked, order, 1), np.take_along_axis(cols, order, 1)
    ids = np.where(np.isneginf(picked), -1, cols).astype(np.int64)
    return picked.astype(np.float32), ids


register_opener(_KIND, BM25._open)
