"""A retriever: an encoder, an index, and an optional re-ranking stage.

The cascade production systems run: a fast first stage (a dense index, e.g.
int8 or binary codes) proposes candidates, then a second stage, the
``reranker``, re-ranks the best ``rerank`` of them exactly: either with the
float copy of the same vectors (``reranker="exact"``, the index's
``rerank``) or by late interaction (``reranker=(multivector encoder,
MultiVectorIndex)``, MaxSim over the candidates, the index's ``subset``; or a
``PlaidIndex``, MaxSim over the candidates' decompressed tokens). The
re-ranking depth is a search argument, not index state.

A multivector encoder searches a multi-vector index as its single stage: a
``MultiVectorIndex`` (exact MaxSim), a ``PlaidIndex`` (centroid candidates,
then MaxSim over decompressed tokens; its stage sizes through
``search(nprobe=, index_options=)``), or a ``MultiVectorIndex`` behind a
MUVERA first stage (``muvera=FDE(...)``: the ``rerank`` best documents by
fixed-dimensional encoding, re-ranked by exact MaxSim).

A lexical stage (``lexical=True``: BM25 on bm25s, stemmed) joins the dense one
for hybrid search: the two shortlists are fused (``hybrid=``: reciprocal rank
fusion, a normalised convex combination, or their union re-ranked by MaxSim;
see flatcoat.fusion and docs/hybrid.md). ``filter=`` restricts every stage to
the documents whose metadata match (docs/filters.md).

User ids (str or int) map to int64 internal ids inside the indexes (never
reused after a removal); the texts are kept for display and the lexical
stage, the metadata as the first-stage index's attributes. GPU code is reached only when an index is on
a GPU (its ``device``); a CPU search never imports it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._attributes import AttributeStore
from ._persist import IndexFormatError, SavedDirectory, read_directory, register_opener, write_directory
from ._validate import as_bool, as_int, as_k
from .fusion import Hybrid, as_hybrid, fuse, union_candidates
from .dense import DenseIndex
from .encoders import Encoder, EncoderConfig, KINDS, check_texts
from .ivf import IVFIndex
from .multivector import MultiVectorIndex
from .muvera import FDE
from .plaid import PlaidIndex

__all__ = ["Retriever", "Hit"]

KIND = "retriever"
RERANKERS = (None, "exact", "multivector")
#: Indexes a multivector encoder searches (or re-ranks with).
MULTIVECTOR_INDEXES = (MultiVectorIndex, PlaidIndex)
#: ``Retriever.search(index_options=)``: the search arguments each first stage takes.
INDEX_OPTIONS = {IVFIndex: ("nprobe",), PlaidIndex: ("nprobe", "ncandidates", "ndocs", "centroid_threshold")}

UserId = Union[str, int]


@dataclass(frozen=True)
class Hit:
    """One search result: the user's id, the final-stage score (a fused score for hybrid search),
    the stored text and the document's metadata (a dict of the fields it has)."""

    id: UserId
    score: float
    text: Optional[str]
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

#: ``hybrid=`` values that pick one stage instead of fusing.
SINGLE_STAGES = ("dense", "lexical")


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
    if not isinstance(index, (DenseIndex, IVFIndex) + MULTIVECTOR_INDEXES):
        raise TypeError("index must be a flatcoat index (DenseIndex, IVFIndex, MultiVectorIndex or PlaidIndex), "
                        f"got {type(index).__name__}")
    mv_index = isinstance(index, MULTIVECTOR_INDEXES)
    if encoder.kind == "multivector" and not mv_index:
        raise ValueError("a multivector encoder needs a MultiVectorIndex or a PlaidIndex; use a dense encoder with "
                         "a DenseIndex")
    if encoder.kind == "dense" and mv_index:
        raise ValueError(f"a {type(index).__name__} needs Encoder.from_pretrained(..., kind='multivector')")
    if index.dim != encoder.dim:
        raise ValueError(f"index dim {index.dim} does not match the encoder's dim {encoder.dim}")
    if reranker is None:
        return None, None, None
    if isinstance(reranker, str):
        if reranker != "exact":
            raise ValueError(
                f"reranker must be None, 'exact' or (multivector encoder, MultiVectorIndex or PlaidIndex), "
                f"got {reranker!r}")
        if mv_index:
            raise ValueError("reranker='exact' applies to a quantized DenseIndex (re-ranked from its float copy); a "
                             "multi-vector index is scored by MaxSim itself")
        if not index.keep_float:
            raise ValueError("reranker='exact' needs a DenseIndex built with keep_float=True")
        return "exact", None, None
    if isinstance(reranker, tuple) and len(reranker) == 2:
        r_enc, r_index = reranker
        if mv_index:
            raise ValueError("a late-interaction reranker needs a dense first stage (a DenseIndex)")
        if not isinstance(r_enc, Encoder) or r_enc.kind != "multivector":
            raise TypeError("reranker[0] must be an Encoder with kind='multivector'")
        if not isinstance(r_index, MULTIVECTOR_INDEXES):
            raise TypeError(f"reranker[1] must be a MultiVectorIndex or a PlaidIndex, got {type(r_index).__name__}")
        if r_index.dim != r_enc.dim:
            raise ValueError(f"reranker index dim {r_index.dim} does not match its encoder's dim {r_enc.dim}")
        return "multivector", r_enc, r_index
    raise TypeError("reranker must be None, 'exact' or a (multivector encoder, MultiVectorIndex or PlaidIndex) "
                    "tuple")


def _check_muvera(muvera: Any, encoder: Encoder, index: Any) -> Tuple[Optional[FDE], Any]:
    """Validates ``muvera=``; returns (the FDE, its empty dense index) or (None, None)."""
    if muvera is None:
        return None, None
    fde, fde_index = muvera if isinstance(muvera, tuple) and len(muvera) == 2 else (muvera, None)
    if not isinstance(fde, FDE):
        raise TypeError(f"muvera: expected a flatcoat.muvera.FDE (or an (FDE, DenseIndex) pair), got "
                        f"{type(fde).__name__}")
    if not isinstance(index, MultiVectorIndex):
        raise ValueError(f"muvera: the FDE candidates are re-ranked by exact MaxSim over a MultiVectorIndex "
                         f"(with a multivector encoder), this index is a {type(index).__name__}")
    if fde.dim != encoder.dim:
        raise ValueError(f"muvera: the FDE's dim {fde.dim} does not match the encoder's dim {encoder.dim}; "
                         f"build it as FDE({encoder.dim}, ...)")
    if fde_index is None:
        fde_index = DenseIndex(fde.output_dim, metric="ip")
    if not isinstance(fde_index, (DenseIndex, IVFIndex)):
        raise TypeError(f"muvera[1]: expected a DenseIndex or an IVFIndex of the FDEs, got {type(fde_index).__name__}")
    if fde_index.dim != fde.output_dim or fde_index.metric != "ip":
        raise ValueError(f"muvera[1]: the FDE index must have dim fde.output_dim ({fde.output_dim}) and metric 'ip', "
                         f"got dim {fde_index.dim} and metric {fde_index.metric!r}")
    return fde, fde_index


def _device_of(index: Any) -> str:
    return getattr(index, "device", "cpu")  # a PlaidIndex is CPU-only and has no device


def _on_device(encoder: Encoder, index: Any) -> bool:
    """Whether queries can be encoded straight into the index's GPU memory."""
    return _device_of(index) != "cpu" and encoder.device == _device_of(index)


class Retriever:
    """Texts in, ranked hits out.

    ``encoder``: a dense :class:`Encoder` with a ``DenseIndex`` (or an
    ``IVFIndex``: trained with ``train()`` first, or on a first ``add`` of at
    least 256 texts) of the same dimension, or a multivector encoder with a
    ``MultiVectorIndex`` (exact MaxSim, single stage) or a ``PlaidIndex``
    (compressed, centroid-pruned MaxSim; trained on the first ``add`` of at
    least 256 tokens, or with ``train()`` first). ``reranker``: ``None``; ``"exact"`` (the dense
    index must be built with ``keep_float=True``; its quantized scan is
    re-ranked with float vectors); or ``(multivector_encoder,
    MultiVectorIndex)`` (or a ``PlaidIndex``: MaxSim over the candidates'
    decompressed tokens, a smaller second stage). ``muvera`` (a multivector
    encoder with a ``MultiVectorIndex`` only): a :class:`flatcoat.muvera.FDE`,
    or ``(FDE, empty DenseIndex)`` to choose the FDE index's storage (default
    f32, metric "ip"): documents' FDEs are kept in that dense index, a search
    takes the ``rerank`` best by FDE inner product and re-ranks them by exact
    MaxSim (docs/muvera.md). ``lexical``: also keep a BM25 stage over the texts
    (needs bm25s: ``pip install 'flatcoat[eval]'``) for ``search(hybrid=)``;
    a retriever with one searches hybrid by default. Indexes must be empty:
    :meth:`add` fills them.

    >>> import flatcoat                                                    # doctest: +SKIP
    >>> enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2")          # doctest: +SKIP
    >>> index = flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True)  # doctest: +SKIP
    >>> r = flatcoat.Retriever(enc, index, reranker="exact", lexical=True) # doctest: +SKIP
    >>> r.add(["csv: read and write CSV files", "argparse: command-line parsing"], ids=["csv", "argparse"],
    ...       metadata=[{"module": "csv"}, {"module": "argparse"}])      # doctest: +SKIP
    >>> r.search("parse command line options", k=1)[0].id                  # doctest: +SKIP
    'argparse'
    """

    def __init__(self, encoder: Encoder, index: Any, *, reranker: Any = None, lexical: bool = False,
                 muvera: Any = None):
        kind, r_enc, r_index = _check_stages(encoder, index, reranker)
        fde, fde_index = _check_muvera(muvera, encoder, index)
        lexical = as_bool(lexical, "lexical")
        for what, idx in (("index", index), ("reranker index", r_index), ("muvera index", fde_index)):
            if idx is not None and len(idx) != 0:
                raise ValueError(
                    f"{what} already holds {len(idx)} entries; pass an empty index (Retriever.add encodes and adds texts)"
                )
        if lexical:
            from .lexical import _bm25s

            _bm25s()  # a missing bm25s is reported now, not at the first search
        self._set(encoder, index, kind, r_enc, r_index, {}, {}, lexical, fde=fde, fde_index=fde_index)

    def _set(self, encoder, index, kind, r_enc, r_index, ids: Dict[int, UserId], texts: Dict[int, str],
             lexical: bool, bm25=None, bm25_rows: Optional[np.ndarray] = None, *, fde: Optional[FDE] = None,
             fde_index: Any = None) -> None:
        self.encoder = encoder
        self.index = index
        self._fde: Optional[FDE] = fde  # MUVERA: the transform and the dense index of the documents' FDEs
        self._fde_index: Any = fde_index
        self._reranker_kind: Optional[str] = kind
        self._reranker_encoder: Optional[Encoder] = r_enc
        self._reranker_index: Any = r_index
        # Internal id (the indexes' int64 id) -> user id and text; internal ids are never reused.
        self._ids: Dict[int, UserId] = ids
        self._texts: Dict[int, str] = texts
        self._lookup: Dict[UserId, int] = {uid: n for n, uid in ids.items()}
        self._next_internal = max(ids, default=-1) + 1
        # Automatic ids continue after the largest integer id so far: they never collide with a user's.
        self._next_id = max([i + 1 for i in ids.values() if isinstance(i, int)], default=0)
        self._lexical = lexical
        self._bm25 = bm25            # built lazily over the live texts; None after a change
        self._bm25_rows = bm25_rows  # internal id of each BM25 document position

    # --------------------------------------------------------------- content
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        stages = f"encoder={self.encoder!r}, index={self.index!r}"
        if self._reranker_kind == "exact":
            stages += ", reranker='exact'"
        elif self._reranker_kind == "multivector":
            stages += f", reranker=({self._reranker_encoder!r}, {self._reranker_index!r})"
        if self._fde is not None:
            stages += f", muvera={self._fde!r}"
        if self._lexical:
            stages += ", lexical=True"
        return f"Retriever({len(self)} documents, {stages})"

    @property
    def ids(self) -> List[UserId]:
        """The user ids, in the order they were added."""
        return list(self._ids.values())

    @property
    def reranker(self) -> Optional[str]:
        """The second stage: None, "exact" or "multivector"."""
        return self._reranker_kind

    @property
    def muvera(self) -> Optional[FDE]:
        """The MUVERA first stage's transform (:class:`flatcoat.muvera.FDE`), or None."""
        return self._fde

    @property
    def lexical(self) -> bool:
        """Whether the retriever keeps a BM25 stage (for hybrid search)."""
        return self._lexical

    def _internal(self, id: UserId) -> int:
        try:
            return self._lookup[id]
        except (KeyError, TypeError):  # TypeError: an unhashable id is not in the retriever either
            raise KeyError(f"id {id!r} is not in this retriever") from None

    def text(self, id: UserId) -> str:
        """The stored text of a document."""
        return self._texts[self._internal(id)]

    def metadata(self, id: UserId) -> Dict[str, Any]:
        """The stored metadata of a document (the fields it has)."""
        return self.index.get([self._internal(id)], vectors=False)[1][0]

    def _user_ids(self, ids: Any, n: int, new: bool) -> List[UserId]:
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
            if (new and x in self._lookup) or x in seen:
                raise ValueError(f"id {x!r} is already in the retriever or repeated in this call; ids must be unique "
                                 "(upsert replaces a document)" if new else f"id {x!r} is repeated in this call")
            seen.add(x)
        return out

    def add(self, texts: Sequence[str], ids: Optional[Sequence[UserId]] = None, batch_size: int = 32, *,
            metadata=None) -> List[UserId]:
        """Encode and index documents; returns their ids.

        Default ids are consecutive integers after the largest integer id so
        far, so they never collide with ids given before. ``metadata``: a list
        of dicts (one per text) or a dict of columns, typed values (int,
        float, bool, str, list of str) for ``search(filter=)``; hits carry them.
        """
        items = check_texts(texts)
        user_ids = self._user_ids(ids, len(items), new=True)
        self._insert(items, user_ids, metadata, batch_size, replace=[])
        return user_ids

    def upsert(self, texts: Sequence[str], ids: Sequence[UserId], batch_size: int = 32, *,
               metadata=None) -> List[UserId]:
        """Adds or replaces documents by id: a present id gets the new text, vectors and metadata (the
        old metadata is dropped, not merged). The texts are encoded and the metadata checked before
        anything changes."""
        if ids is None:
            raise TypeError("ids: upsert needs the ids to add or replace (add() chooses ids itself)")
        items = check_texts(texts)
        user_ids = self._user_ids(ids, len(items), new=False)
        self._insert(items, user_ids, metadata, batch_size, replace=[u for u in user_ids if u in self._lookup])
        return user_ids

    def _insert(self, items: List[str], user_ids: List[UserId], metadata, batch_size: int, replace: List[UserId]):
        AttributeStore.parse(metadata, len(items), "metadata", schema=self.index.schema)  # refused before any change
        vecs = self.encoder.encode_documents(items, batch_size=batch_size)
        second = None
        if self._reranker_kind == "multivector":
            second = self._reranker_encoder.encode_documents(items, batch_size=batch_size)
        if replace:
            self.remove(replace)
        internal = np.arange(self._next_internal, self._next_internal + len(items), dtype=np.int64)
        self.index.add(vecs, ids=internal, attributes=metadata)
        if second is not None:
            try:
                self._reranker_index.add(second, ids=internal)
            except BaseException:
                self.index.remove(internal)  # keep both stages in step
                raise
        if self._fde is not None:
            try:
                self._fde_index.add(self._fde.encode_documents(vecs), ids=internal)
            except BaseException:
                self.index.remove(internal)
                raise
        self._next_internal += len(items)
        for n, uid, text in zip(internal.tolist(), user_ids, items):
            self._lookup[uid] = n
            self._ids[n] = uid
            self._texts[n] = text
        self._next_id = max([self._next_id] + [i + 1 for i in user_ids if isinstance(i, int)])
        self._bm25 = None

    def remove(self, ids: Sequence[UserId]) -> int:
        """Removes documents by id (every id must be present, else a KeyError and nothing is removed);
        returns the number removed."""
        if isinstance(ids, (str, bytes, int)):
            raise TypeError("ids: expected a list of ids; wrap one id in a list")
        internal = sorted({self._internal(i) for i in ids})
        if not internal:
            return 0
        arr = np.array(internal, dtype=np.int64)
        self.index.remove(arr)
        if self._reranker_index is not None:
            self._reranker_index.remove(arr)
        if self._fde_index is not None:
            self._fde_index.remove(arr)
        for n in internal:
            del self._lookup[self._ids.pop(n)]
            del self._texts[n]
        self._bm25 = None
        return len(internal)

    # ---------------------------------------------------------------- search
    def search(
        self,
        queries: Union[str, Sequence[str]],
        k: int = 10,
        *,
        instruction: Optional[str] = None,
        rerank: Optional[int] = None,
        nprobe: Optional[int] = None,
        filter=None,
        hybrid=None,
        batch_size: int = 32,
        index_options: Optional[Dict[str, Any]] = None,
    ) -> Union[List[Hit], List[List[Hit]]]:
        """Top-``k`` hits per query, best first (at most as many as the retriever holds).

        ``queries``: a list of strings (returns one list of :class:`Hit` per
        query) or a single string (returns its list of hits). ``instruction``
        is applied to the queries through the encoder's template.
        ``rerank``: how many first-stage candidates the reranker sees
        (``>= k``; default ``max(10 * k, 100)``, at most the collection; with
        ``muvera``, the FDE candidates that exact MaxSim re-ranks);
        ignored without a reranker. ``nprobe``: lists scanned per query by an
        :class:`IVFIndex` first stage (default: the index's, ``min(nlist, 32)``),
        or centroids probed per query token by a :class:`PlaidIndex` (default 4);
        a ``ValueError`` for any other first stage. ``index_options``: a dict of
        the first-stage index's own search arguments (a ``PlaidIndex``:
        ``nprobe``, ``ncandidates``, ``ndocs``, ``centroid_threshold``; an
        ``IVFIndex``: ``nprobe``), e.g. ``{"ndocs": 256}``; a ``ValueError``
        names any the index does not take.

        ``filter``: only documents whose metadata match (a dict predicate,
        docs/filters.md) or whose ids are listed (a list of user ids) are
        returned, by every stage.

        ``hybrid`` (needs ``lexical=True``): ``None`` is the default fusion
        (:data:`flatcoat.fusion.DEFAULT_HYBRID`) when the retriever has a
        lexical stage, else the dense cascade; ``"dense"`` or ``"lexical"``
        one stage; ``True``, ``"rrf"``, ``"convex"``, ``"union"``, a
        :class:`flatcoat.fusion.Hybrid` or a dict of its fields: the dense and
        lexical shortlists (``depth`` each, default ``max(10 * k, 100)``)
        fused by reciprocal rank or a min-max normalised convex combination
        (with a late-interaction reranker, its MaxSim ranking of the union is
        a third list), or their union re-ranked by MaxSim (``"union"``, needs
        that reranker). Scores are then the fused scores.
        """
        single = isinstance(queries, str)
        items = check_texts([queries] if single else queries, "queries")
        k = as_k(k, "k")
        if rerank is not None:
            rerank = as_k(rerank, "rerank")
            if rerank < k:
                raise ValueError(f"rerank: must be at least k ({k}), got {rerank}")
        first: Dict[str, Any] = self._index_options(index_options)  # the first stage's own search arguments
        if nprobe is not None:
            if not isinstance(self.index, (IVFIndex, PlaidIndex)):
                raise ValueError(f"nprobe: only for an IVFIndex or PlaidIndex first stage, this one is a "
                                 f"{type(self.index).__name__}")
            if "nprobe" in first:
                raise ValueError("nprobe: given twice, as nprobe= and in index_options; pass it once")
            first["nprobe"] = as_int(nprobe, "nprobe", 1)
        mode = self._mode(hybrid)
        if len(self) == 0:
            raise ValueError("the retriever is empty; add documents first")
        index_filter = self._index_filter(filter)
        if index_filter is not None:
            first["filter"] = index_filter
        # Work and memory are bounded by the collection, whatever k and rerank.
        k = min(k, len(self))
        depth = min(rerank if rerank is not None else _default_depth(k), len(self))
        if mode == "lexical":
            scores, ids = self._lexical_search(items, k, index_filter)
        elif isinstance(mode, Hybrid):
            scores, ids = self._hybrid_search(mode, items, k, depth, first, instruction, batch_size)
        else:
            scores, ids = self._dense_search(items, k, depth, first, instruction, batch_size)
        scores, ids = self._host(scores), self._host(ids)
        metadata = self._metadata_of(ids)
        out = [self._hits(scores[i], ids[i], metadata) for i in range(len(items))]
        return out[0] if single else out

    def _index_options(self, options) -> Dict[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise TypeError(f"index_options: expected a dict of the index's search arguments (e.g. "
                            f"{{'ndocs': 256}}), got {type(options).__name__}")
        allowed = INDEX_OPTIONS.get(type(self.index), ())
        unknown = sorted(set(options) - set(allowed), key=str)
        if unknown:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes none"
            raise ValueError(f"index_options: {', '.join(map(repr, unknown))} not a search argument of this "
                             f"retriever's {type(self.index).__name__} (it {takes})")
        return dict(options)

    def _mode(self, hybrid):
        if hybrid is None:
            return as_hybrid(True) if self._lexical else "dense"
        if isinstance(hybrid, str) and hybrid in SINGLE_STAGES:
            mode = hybrid
        else:
            mode = as_hybrid(hybrid)
        if mode != "dense" and not self._lexical:
            raise ValueError("hybrid: this retriever has no lexical stage; build it with Retriever(..., lexical=True)")
        if isinstance(mode, Hybrid) and mode.method == "union" and self._reranker_kind != "multivector":
            raise ValueError("hybrid: 'union' re-ranks the union of the shortlists by MaxSim and needs a "
                             "late-interaction reranker (reranker=(multivector encoder, MultiVectorIndex))")
        return mode

    def _index_filter(self, filter):
        """``filter`` for the first-stage index: a dict as it is, a list of user ids as internal ids."""
        if filter is None or isinstance(filter, dict):
            return filter
        if isinstance(filter, (str, bytes)) or not isinstance(filter, (list, tuple, set, frozenset)):
            raise TypeError(f"filter: expected a dict predicate (e.g. {{'year': {{'$gte': 2020}}}}) or a list of "
                            f"document ids, got {type(filter).__name__}")
        internal = []
        for uid in filter:
            try:
                n = self._lookup.get(uid)
            except TypeError:
                raise TypeError(f"filter: ids must be str or int, got {type(uid).__name__}") from None
            if n is not None:  # an id not in the retriever matches nothing
                internal.append(n)
        return np.array(internal, dtype=np.int64)

    def _dense_search(self, items, k, depth, first, instruction, batch_size):
        if self._fde is not None:
            return self._muvera_search(items, k, depth, first, instruction, batch_size)
        q = self._encode_queries(self.encoder, self.index, items, instruction, batch_size)
        if self._reranker_kind == "exact":
            return self.index.search(q, k=k, rerank=depth, **first)
        if self._reranker_kind == "multivector":
            _, candidates = self.index.search(q, k=depth, **first)
            return self._maxsim(items, k, self._host(candidates), instruction, batch_size)
        return self.index.search(q, k=k, **first)

    def _muvera_search(self, items, k, depth, first, instruction, batch_size):
        """MUVERA: the ``depth`` best documents by FDE inner product, re-ranked by exact MaxSim."""
        from .muvera import search as muvera_search

        q = self.encoder.encode_queries(items, instruction=instruction, batch_size=batch_size)  # host: FDEs are numpy
        return muvera_search(self._fde, self._fde_index, self.index, q, k, rerank=max(k, depth),
                             filter=first.get("filter"))

    def _maxsim(self, items, k, subset, instruction, batch_size):
        qmv = self._encode_queries(self._reranker_encoder, self._reranker_index, items, instruction, batch_size)
        if isinstance(self._reranker_index, PlaidIndex):
            return self._plaid_rerank(qmv, k, subset)
        return self._reranker_index.search(qmv, k=k, subset=subset)

    def _plaid_rerank(self, queries, k, subset):
        """MaxSim over each query's candidates' decompressed tokens: one PlaidIndex search per query, its
        filter the candidates (so they are the PLAID candidates themselves) and every stage as deep as them."""
        subset = self._host(subset) if isinstance(subset, np.ndarray) else [self._host(c) for c in subset]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for i, (query, row) in enumerate(zip(queries, subset)):
            row = np.unique(np.asarray(row, dtype=np.int64))
            row = row[row >= 0]
            if row.size == 0:
                continue
            deep = max(k, row.size)
            s, found = self._reranker_index.search(query, k=k, filter=row, ncandidates=deep, ndocs=deep)
            scores[i, : s.shape[1]], ids[i, : s.shape[1]] = s[0], found[0]
        return scores, ids

    def _lexical_search(self, items, depth, index_filter):
        """BM25 results as internal ids (q, depth'), restricted like the first stage."""
        from .lexical import BM25

        if self._bm25 is None:  # rebuilt over the live texts after a change
            rows = np.fromiter(self._texts.keys(), dtype=np.int64, count=len(self._texts))
            self._bm25 = BM25([self._texts[n] for n in rows.tolist()])
            self._bm25_rows = rows
        allowed = None
        if index_filter is not None:
            allowed = np.isin(self._bm25_rows, self.index.matches(index_filter))
        scores, positions = self._bm25.search(items, k=min(depth, len(self._bm25_rows)), allowed=allowed)
        ids = np.where(positions >= 0, self._bm25_rows[np.maximum(positions, 0)], -1)
        return scores, ids

    def _hybrid_search(self, hybrid: Hybrid, items, k, depth, first, instruction, batch_size):
        depth = min(hybrid.depth if hybrid.depth is not None else depth, len(self))  # per list
        if self._fde is not None:
            dense = self._muvera_search(items, depth, depth, first, instruction, batch_size)
        else:
            q = self._encode_queries(self.encoder, self.index, items, instruction, batch_size)
            if self._reranker_kind == "exact":
                dense = self.index.search(q, k=depth, rerank=depth, **first)
            else:
                dense = self.index.search(q, k=depth, **first)
        dense = (self._host(dense[0]), self._host(dense[1]))
        lexical = self._lexical_search(items, depth, first.get("filter"))
        lists = [dense, lexical]
        if self._reranker_kind == "multivector":
            union = union_candidates(lists)
            late = self._maxsim(items, depth, union, instruction, batch_size)
            late = (self._host(late[0]), self._host(late[1]))
            if hybrid.method == "union":
                return late[0][:, :k], late[1][:, :k]
            lists = [dense, late, lexical]
        return fuse(hybrid, lists, k, lexical=len(lists) - 1)

    def _uses_gpu(self) -> bool:
        return any(idx is not None and _device_of(idx) != "cpu"
                   for idx in (self.index, self._reranker_index, self._fde_index))

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

    def _metadata_of(self, ids: np.ndarray) -> Dict[int, Dict[str, Any]]:
        found = np.unique(ids[ids >= 0])
        if not self.index.schema or not found.size:
            return {}
        return dict(zip(found.tolist(), self.index.get(found, vectors=False)[1]))

    def _hits(self, scores: np.ndarray, ids: np.ndarray, metadata: Dict[int, Dict[str, Any]]) -> List[Hit]:
        hits = []
        for s, i in zip(scores.tolist(), ids.tolist()):
            if i < 0:
                continue  # padding: fewer candidates than k
            hits.append(Hit(self._ids[i], float(s), self._texts[i], metadata.get(i, {})))
        return hits

    # ----------------------------------------------------------- persistence
    def save(self, path: "str | os.PathLike[str]") -> None:
        """Write the retriever to directory ``path`` atomically (see ``flatcoat.load``).

        One flatcoat directory of kind "retriever": ``manifest.json`` (the
        encoders' names and configs, the reranker), ``ids.json``,
        ``texts.json``, ``internal.npy`` (the indexes' id of each document),
        the child index directory ``index/`` (with the metadata as its
        attributes; a ``PlaidIndex`` is saved as it is), with a late-interaction
        reranker ``rerank/``, with MUVERA ``muvera/`` (the FDE index; the
        manifest keeps the FDE's parameters, which rebuild the transform), with a
        lexical stage ``lexical/`` and ``lexical_rows.npy``; every file
        checksummed. An existing flatcoat directory at ``path`` is replaced.
        """
        meta = {
            "count": len(self),
            "encoder": _encoder_state(self.encoder),
            "reranker": self._reranker_kind,
            "reranker_encoder": _encoder_state(self._reranker_encoder) if self._reranker_encoder else None,
            "lexical": self._lexical,
            "muvera": self._fde.params if self._fde is not None else None,
        }
        if self._lexical and self._bm25 is None and len(self):
            self._lexical_search([""], 1, None)  # builds the lexical stage, so that it is saved

        def fill(writer) -> None:
            writer.add_child("index", self.index.save)
            if self._reranker_index is not None:
                writer.add_child("rerank", self._reranker_index.save)
            if self._fde_index is not None:
                writer.add_child("muvera", self._fde_index.save)
            if self._lexical and self._bm25 is not None:
                writer.add_child("lexical", self._bm25.save)
                writer.add_array("lexical_rows", self._bm25_rows)
            writer.add_array("internal", np.fromiter(self._ids.keys(), dtype=np.int64, count=len(self._ids)))
            writer.add_json("ids", list(self._ids.values()))
            writer.add_json("texts", list(self._texts.values()))

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

        count, kind, lexical = meta.get("count"), meta.get("reranker"), meta.get("lexical", False)
        need(isinstance(count, int) and not isinstance(count, bool) and count >= 0, f"invalid count {count!r}")
        need(kind in RERANKERS, f"unknown reranker {kind!r}")
        need(isinstance(lexical, bool), f"invalid lexical {lexical!r}")
        fde_params = meta.get("muvera")
        need(fde_params is None or isinstance(fde_params, dict), f"invalid muvera {fde_params!r}")
        fde = None
        if fde_params is not None:
            try:
                fde = FDE(**fde_params)
            except (TypeError, ValueError) as exc:
                raise IndexFormatError(f"{root}: the saved MUVERA parameters {fde_params!r} do not build an FDE "
                                       f"({exc})") from exc
        children = ({"index"} | ({"rerank"} if kind == "multivector" else set())
                    | ({"muvera"} if fde is not None else set()))
        need(set(saved.children) - {"lexical"} == children and ("lexical" not in saved.children or lexical),
             f"child directories {sorted(saved.children)} do not match reranker {kind!r}, muvera "
             f"{fde_params is not None} and lexical {lexical}")
        ids, texts = saved.documents.get("ids"), saved.documents.get("texts")
        need(isinstance(ids, list) and isinstance(texts, list) and len(ids) == len(texts) == count,
             "ids.json, texts.json and the manifest disagree on the document count")
        need(all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids), "ids.json: ids must be str or int")
        need(len(set(ids)) == count, "ids.json: duplicate ids")
        need(all(isinstance(t, str) for t in texts), "texts.json: texts must be strings")
        internal = saved.arrays.get("internal")
        internal = np.arange(count, dtype=np.int64) if internal is None else np.asarray(internal)
        need(internal.dtype == np.int64 and internal.shape == (count,) and (count == 0 or int(internal.min()) >= 0)
             and np.unique(internal).size == count, "internal.npy: one distinct non-negative id per document")
        def child(name):  # opened on the CPU, then moved: a PlaidIndex has no GPU copy
            idx = saved.open_child(name, mmap=mmap, verify=verify)
            if device != "cpu":
                if not hasattr(idx, "to"):
                    raise ValueError(f"device: {root}/{name} holds a {type(idx).__name__}, which searches on the CPU "
                                     "only; load with device='cpu'")
                idx.to(device)
            return idx

        index = child("index")
        r_index = child("rerank") if kind == "multivector" else None
        fde_index = child("muvera") if fde is not None else None
        for what, idx in (("index", index), ("rerank", r_index), ("muvera", fde_index)):
            if idx is not None:
                need(len(idx) == count, f"{what}/ holds {len(idx)} entries, the manifest says {count}")
                need(np.array_equal(np.sort(np.asarray(idx.ids)), np.sort(internal)),
                     f"{what}/ ids are not the documents' internal ids")
        bm25 = bm25_rows = None
        if "lexical" in saved.children:
            bm25 = saved.open_child("lexical", mmap=mmap, verify=verify)
            bm25_rows = np.asarray(saved.arrays.get("lexical_rows"))
            need(bm25_rows.dtype == np.int64 and bm25_rows.shape == (len(bm25),)
                 and np.array_equal(np.sort(bm25_rows), np.sort(internal)),
                 "lexical_rows.npy: one internal id per lexical document")
        enc = encoder if encoder is not None else _encoder_from_state(meta.get("encoder"), "encoder", saved, providers)
        r_enc = None
        if kind == "multivector":
            r_enc = (reranker_encoder if reranker_encoder is not None
                     else _encoder_from_state(meta.get("reranker_encoder"), "reranker_encoder", saved, providers))
        reranker = kind if kind != "multivector" else (r_enc, r_index)
        try:
            checked = _check_stages(enc, index, reranker)
            if fde is not None:
                _check_muvera((fde, fde_index), enc, index)
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{root}: the saved stages do not fit together ({exc})") from exc
        self = cls.__new__(cls)  # the indexes are already filled: __init__ wants empty ones
        order = internal.tolist()
        self._set(enc, index, *checked, dict(zip(order, ids)), dict(zip(order, texts)), lexical, bm25, bm25_rows,
                  fde=fde, fde_index=fde_index)
        return self


register_opener(KIND, Retriever._open)
