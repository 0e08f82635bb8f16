"""A retriever: an encoder, an index, and an optional re-ranking stage.

The cascade production systems run: a fast first stage (a dense index, e.g.
int8 or binary codes) proposes candidates, then a second stage, the
``reranker``, re-ranks the best ``rerank`` of them exactly: either with the
float copy of the same vectors (``reranker="exact"``, the index's
``rerank``) or by late interaction (``reranker=(multivector encoder,
MultiVectorIndex)``, MaxSim over the candidates, the index's ``subset``). The
re-ranking depth is a search argument, not index state.

User ids (str or int) map to consecutive int64 positions inside the indexes;
the texts are kept for display. GPU code is reached only when an index is on
a GPU (its ``device``); a CPU search never imports it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._persist import IndexFormatError, SavedDirectory, read_directory, register_opener, write_directory
from ._validate import as_int, as_k
from .dense import DenseIndex
from .encoders import Encoder, EncoderConfig, KINDS, check_texts
from .ivf import IVFIndex
from .multivector import MultiVectorIndex

__all__ = ["Retriever", "Hit"]

KIND = "retriever"
RERANKERS = (None, "exact", "multivector")

UserId = Union[str, int]


@dataclass(frozen=True)
class Hit:
    """One search result: the user's id, the final-stage score, and the stored text."""

    id: UserId
    score: float
    text: Optional[str]


def _default_depth(k: int) -> int:
    return max(10 * k, 100)


def _encoder_state(enc: Encoder) -> Dict[str, Any]:
    cfg = dataclasses.asdict(enc.config)
    cfg.pop("kind")
    cfg["skiplist"] = list(cfg["skiplist"])
    return {"name": enc.name, "kind": enc.kind, "config": cfg}


def _encoder_from_state(state: Any, what: str, saved: SavedDirectory, providers) -> Encoder:
    manifest = saved.path / "manifest.json"
    if not (isinstance(state, dict) and isinstance(state.get("name"), str) and state.get("kind") in KINDS
            and isinstance(state.get("config"), dict)):
        raise IndexFormatError(f"{manifest}: meta.{what} must hold the encoder's name, kind and config")
    known = {f.name for f in dataclasses.fields(EncoderConfig)} - {"kind"}
    config = {k: v for k, v in state["config"].items() if k in known}
    try:
        return Encoder.from_pretrained(state["name"], kind=state["kind"], providers=providers, **config)
    except (TypeError, ValueError) as exc:
        raise IndexFormatError(
            f"{manifest}: the saved {what} {state['name']!r} cannot be rebuilt ({exc}); "
            f"pass it to Retriever.load({what}=...)"
        ) from exc


def _check_stages(encoder: Any, index: Any, reranker: Any) -> Tuple[Optional[str], Optional[Encoder], Any]:
    """Validates a Retriever's stages; returns (reranker kind, its encoder, its index)."""
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be a flatcoat.Encoder, got {type(encoder).__name__}")
    if not isinstance(index, (DenseIndex, IVFIndex, MultiVectorIndex)):
        raise TypeError(
            f"index must be a flatcoat index (DenseIndex, IVFIndex or MultiVectorIndex), got {type(index).__name__}")
    mv_index = isinstance(index, MultiVectorIndex)
    if encoder.kind == "multivector" and not mv_index:
        raise ValueError("a multivector encoder needs a MultiVectorIndex; use a dense encoder with a DenseIndex")
    if encoder.kind == "dense" and mv_index:
        raise ValueError("a MultiVectorIndex needs Encoder.from_pretrained(..., kind='multivector')")
    if index.dim != encoder.dim:
        raise ValueError(f"index dim {index.dim} does not match the encoder's dim {encoder.dim}")
    if reranker is None:
        return None, None, None
    if isinstance(reranker, str):
        if reranker != "exact":
            raise ValueError(
                f"reranker must be None, 'exact' or (multivector encoder, MultiVectorIndex), got {reranker!r}")
        if mv_index:
            raise ValueError("reranker='exact' applies to a quantized DenseIndex; MaxSim search is already exact")
        if not index.keep_float:
            raise ValueError("reranker='exact' needs a DenseIndex built with keep_float=True")
        return "exact", None, None
    if isinstance(reranker, tuple) and len(reranker) == 2:
        r_enc, r_index = reranker
        if mv_index:
            raise ValueError("a late-interaction reranker needs a dense first stage (a DenseIndex)")
        if not isinstance(r_enc, Encoder) or r_enc.kind != "multivector":
            raise TypeError("reranker[0] must be an Encoder with kind='multivector'")
        if not isinstance(r_index, MultiVectorIndex):
            raise TypeError(f"reranker[1] must be a MultiVectorIndex, got {type(r_index).__name__}")
        if r_index.dim != r_enc.dim:
            raise ValueError(f"reranker index dim {r_index.dim} does not match its encoder's dim {r_enc.dim}")
        return "multivector", r_enc, r_index
    raise TypeError("reranker must be None, 'exact' or a (multivector encoder, MultiVectorIndex) tuple")


def _on_device(encoder: Encoder, index: Any) -> bool:
    """Whether queries can be encoded straight into the index's GPU memory."""
    return index.device != "cpu" and encoder.device == index.device


class Retriever:
    """Texts in, ranked hits out.

    ``encoder``: a dense :class:`Encoder` with a ``DenseIndex`` (or an
    ``IVFIndex``: trained with ``train()`` first, or on a first ``add`` of at
    least 256 texts) of the same dimension, or a multivector encoder with a
    ``MultiVectorIndex`` (exact MaxSim, single stage). ``reranker``: ``None``; ``"exact"`` (the dense
    index must be built with ``keep_float=True``; its quantized scan is
    re-ranked with float vectors); or ``(multivector_encoder,
    MultiVectorIndex)``. Indexes must be empty: :meth:`add` fills them.

    >>> import flatcoat                                                    # doctest: +SKIP
    >>> enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2")          # doctest: +SKIP
    >>> index = flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True)  # doctest: +SKIP
    >>> r = flatcoat.Retriever(enc, index, reranker="exact")               # doctest: +SKIP
    >>> r.add(["csv: read and write CSV files", "argparse: command-line parsing"], ids=["csv", "argparse"])  # doctest: +SKIP
    >>> r.search("parse command line options", k=1)[0].id                  # doctest: +SKIP
    'argparse'
    """

    def __init__(self, encoder: Encoder, index: Any, *, reranker: Any = None):
        kind, r_enc, r_index = _check_stages(encoder, index, reranker)
        for what, idx in (("index", index), ("reranker index", r_index)):
            if idx is not None and len(idx) != 0:
                raise ValueError(
                    f"{what} already holds {len(idx)} entries; pass an empty index (Retriever.add encodes and adds texts)"
                )
        self._set(encoder, index, kind, r_enc, r_index, [], [])

    def _set(self, encoder, index, kind, r_enc, r_index, ids: List[UserId], texts: List[str]) -> None:
        self.encoder = encoder
        self.index = index
        self._reranker_kind: Optional[str] = kind
        self._reranker_encoder: Optional[Encoder] = r_enc
        self._reranker_index: Any = r_index
        self._ids: List[UserId] = ids
        self._texts: List[str] = texts
        self._lookup: Dict[UserId, int] = {uid: n for n, uid in enumerate(ids)}
        # Automatic ids continue after the largest integer id so far: they never collide with a user's.
        self._next_id = max([i + 1 for i in ids if isinstance(i, int)], default=0)

    # --------------------------------------------------------------- content
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        stages = f"encoder={self.encoder!r}, index={self.index!r}"
        if self._reranker_kind == "exact":
            stages += ", reranker='exact'"
        elif self._reranker_kind == "multivector":
            stages += f", reranker=({self._reranker_encoder!r}, {self._reranker_index!r})"
        return f"Retriever({len(self)} documents, {stages})"

    @property
    def ids(self) -> List[UserId]:
        return list(self._ids)

    @property
    def reranker(self) -> Optional[str]:
        """The second stage: None, "exact" or "multivector"."""
        return self._reranker_kind

    def text(self, id: UserId) -> str:
        """The stored text of a document."""
        try:
            return self._texts[self._lookup[id]]
        except (KeyError, TypeError):  # TypeError: an unhashable id is not in the retriever either
            raise KeyError(f"id {id!r} is not in this retriever") from None

    def _check_ids(self, ids: Any, n: int) -> List[UserId]:
        if ids is None:
            return list(range(self._next_id, self._next_id + n))
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be a list of str or int ids, one per text")
        out = [int(i) if isinstance(i, np.integer) else i for i in ids]
        if len(out) != n:
            raise ValueError(f"ids has {len(out)} entries but texts has {n}; pass one id per text")
        for i, x in enumerate(out):
            if isinstance(x, bool) or not isinstance(x, (str, int)):
                raise TypeError(f"ids[{i}] must be a str or an int, got {type(x).__name__}")
        seen = set()
        for x in out:
            if x in self._lookup or x in seen:
                raise ValueError(f"id {x!r} is already in the retriever or repeated in this call; ids must be unique")
            seen.add(x)
        return out

    def add(self, texts: Sequence[str], ids: Optional[Sequence[UserId]] = None, batch_size: int = 32) -> List[UserId]:
        """Encode and index documents; returns their ids.

        Default ids are consecutive integers after the largest integer id so
        far, so they never collide with ids given before.
        """
        items = check_texts(texts)
        user_ids = self._check_ids(ids, len(items))
        internal = np.arange(len(self._ids), len(self._ids) + len(items), dtype=np.int64)
        vecs = self.encoder.encode_documents(items, batch_size=batch_size)
        second = None
        if self._reranker_kind == "multivector":
            second = self._reranker_encoder.encode_documents(items, batch_size=batch_size)
        self.index.add(vecs, ids=internal)
        if second is not None:
            try:
                self._reranker_index.add(second, ids=internal)
            except BaseException:
                self.index.remove(internal)  # keep both stages in step
                raise
        for off, uid in enumerate(user_ids):
            self._lookup[uid] = int(internal[off])
        self._ids.extend(user_ids)
        self._texts.extend(items)
        self._next_id = max([self._next_id] + [i + 1 for i in user_ids if isinstance(i, int)])
        return user_ids

    # ---------------------------------------------------------------- search
    def search(
        self,
        queries: Union[str, Sequence[str]],
        k: int = 10,
        *,
        instruction: Optional[str] = None,
        rerank: Optional[int] = None,
        nprobe: Optional[int] = None,
        batch_size: int = 32,
    ) -> Union[List[Hit], List[List[Hit]]]:
        """Top-``k`` hits per query, best first (at most as many as the retriever holds).

        ``queries``: a list of strings (returns one list of :class:`Hit` per
        query) or a single string (returns its list of hits). ``instruction``
        is applied to the queries through the encoder's template.
        ``rerank``: how many first-stage candidates the reranker sees
        (``>= k``; default ``max(10 * k, 100)``, at most the collection);
        ignored without a reranker. ``nprobe``: lists scanned per query by an
        :class:`IVFIndex` first stage (default: the index's, ``min(nlist, 32)``);
        a ``ValueError`` for any other first stage.
        """
        single = isinstance(queries, str)
        items = check_texts([queries] if single else queries, "queries")
        k = as_k(k, "k")
        if rerank is not None:
            rerank = as_k(rerank, "rerank")
            if rerank < k:
                raise ValueError(f"rerank: must be at least k ({k}), got {rerank}")
        first: Dict[str, int] = {}  # the first stage's own search arguments
        if nprobe is not None:
            if not isinstance(self.index, IVFIndex):
                raise ValueError(f"nprobe: only for an IVFIndex first stage, this one is a {type(self.index).__name__}")
            first["nprobe"] = as_int(nprobe, "nprobe", 1)
        if len(self) == 0:
            raise ValueError("the retriever is empty; add documents first")
        # Work and memory are bounded by the collection, whatever k and rerank.
        k = min(k, len(self))
        depth = min(rerank if rerank is not None else _default_depth(k), len(self))
        q = self._encode_queries(self.encoder, self.index, items, instruction, batch_size)
        if self._reranker_kind == "exact":
            scores, ids = self.index.search(q, k=k, rerank=depth, **first)
        elif self._reranker_kind == "multivector":
            _, candidates = self.index.search(q, k=depth, **first)
            qmv = self._encode_queries(self._reranker_encoder, self._reranker_index, items, instruction, batch_size)
            scores, ids = self._reranker_index.search(qmv, k=k, subset=self._host(candidates))
        else:
            scores, ids = self.index.search(q, k=k, **first)
        scores, ids = self._host(scores), self._host(ids)
        out = [self._hits(scores[i], ids[i]) for i in range(len(items))]
        return out[0] if single else out

    def _uses_gpu(self) -> bool:
        return self.index.device != "cpu" or (
            self._reranker_index is not None and self._reranker_index.device != "cpu")

    def _encode_queries(self, encoder: Encoder, index: Any, items: List[str], instruction, batch_size):
        if _on_device(encoder, index):
            from .cuda_encoders import encode_on_device  # embeddings stay on the GPU

            return encode_on_device(encoder, items, "query", instruction, batch_size)
        return encoder.encode_queries(items, instruction=instruction, batch_size=batch_size)

    def _host(self, x) -> np.ndarray:
        if self._uses_gpu():  # a GPU index may answer with device arrays
            from .cuda_encoders import to_numpy

            return to_numpy(x)
        return np.asarray(x)

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Hit]:
        hits = []
        for s, i in zip(scores.tolist(), ids.tolist()):
            if i < 0:
                continue  # padding: fewer candidates than k
            hits.append(Hit(self._ids[i], float(s), self._texts[i]))
        return hits

    # ----------------------------------------------------------- persistence
    def save(self, path: "str | os.PathLike[str]") -> None:
        """Write the retriever to directory ``path`` atomically (see ``flatcoat.load``).

        One flatcoat directory of kind "retriever": ``manifest.json`` (the
        encoders' names and configs, the reranker), ``ids.json``,
        ``texts.json``, the child index directory ``index/`` and, with a
        late-interaction reranker, ``rerank/``; every file checksummed. An
        existing flatcoat directory at ``path`` is replaced.
        """
        meta = {
            "count": len(self),
            "encoder": _encoder_state(self.encoder),
            "reranker": self._reranker_kind,
            "reranker_encoder": _encoder_state(self._reranker_encoder) if self._reranker_encoder else None,
        }

        def fill(writer) -> None:
            writer.add_child("index", self.index.save)
            if self._reranker_index is not None:
                writer.add_child("rerank", self._reranker_index.save)
            writer.add_json("ids", self._ids)
            writer.add_json("texts", self._texts)

        write_directory(path, KIND, meta, fill)

    @classmethod
    def load(
        cls,
        path: "str | os.PathLike[str]",
        *,
        mmap: bool = True,
        verify: bool = True,
        device: str = "cpu",
        encoder: Optional[Encoder] = None,
        reranker_encoder: Optional[Encoder] = None,
        providers=None,
    ) -> "Retriever":
        """Load a directory written by :meth:`save` (``flatcoat.load`` opens it too).

        Encoders are rebuilt from the saved names and configs (on
        ``providers``) unless given; ``mmap``, ``verify`` and ``device`` apply
        to the indexes as in ``flatcoat.load``.
        """
        saved = read_directory(path, mmap=mmap, verify=verify)
        if saved.kind != KIND:
            raise IndexFormatError(f"{saved.path}: holds a {saved.kind} index, not a Retriever; open it with flatcoat.load")
        return cls._open(saved, mmap=mmap, verify=verify, device=device, encoder=encoder,
                         reranker_encoder=reranker_encoder, providers=providers)

    @classmethod
    def _open(cls, saved: SavedDirectory, *, mmap: bool, verify: bool, device: str, encoder: Optional[Encoder] = None,
              reranker_encoder: Optional[Encoder] = None, providers=None) -> "Retriever":
        root, meta = saved.path, saved.meta

        def need(ok: bool, reason: str) -> None:
            if not ok:
                raise IndexFormatError(f"{root}: {reason}")

        count, kind = meta.get("count"), meta.get("reranker")
        need(isinstance(count, int) and not isinstance(count, bool) and count >= 0, f"invalid count {count!r}")
        need(kind in RERANKERS, f"unknown reranker {kind!r}")
        need(set(saved.children) == ({"index", "rerank"} if kind == "multivector" else {"index"}),
             f"child directories {sorted(saved.children)} do not match reranker {kind!r}")
        ids, texts = saved.documents.get("ids"), saved.documents.get("texts")
        need(isinstance(ids, list) and isinstance(texts, list) and len(ids) == len(texts) == count,
             "ids.json, texts.json and the manifest disagree on the document count")
        need(all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids), "ids.json: ids must be str or int")
        need(len(set(ids)) == count, "ids.json: duplicate ids")
        need(all(isinstance(t, str) for t in texts), "texts.json: texts must be strings")
        index = saved.open_child("index", mmap=mmap, verify=verify, device=device)
        r_index = saved.open_child("rerank", mmap=mmap, verify=verify, device=device) if kind == "multivector" else None
        for what, idx in (("index", index), ("rerank", r_index)):
            if idx is not None:
                need(len(idx) == count, f"{what}/ holds {len(idx)} entries, the manifest says {count}")
                need(np.array_equal(np.sort(np.asarray(idx.ids)), np.arange(count)),
                     f"{what}/ ids are not the positions 0..{count - 1}")
        enc = encoder if encoder is not None else _encoder_from_state(meta.get("encoder"), "encoder", saved, providers)
        r_enc = None
        if kind == "multivector":
            r_enc = (reranker_encoder if reranker_encoder is not None
                     else _encoder_from_state(meta.get("reranker_encoder"), "reranker_encoder", saved, providers))
        reranker = kind if kind != "multivector" else (r_enc, r_index)
        try:
            checked = _check_stages(enc, index, reranker)
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{root}: the saved stages do not fit together ({exc})") from exc
        self = cls.__new__(cls)  # the indexes are already filled: __init__ wants empty ones
        self._set(enc, index, *checked, ids, texts)
        return self


register_opener(KIND, Retriever._open)
