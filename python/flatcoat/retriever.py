"""A retriever: an encoder, an index, and an optional rescoring stage.

The cascade production systems run: a fast first stage (a dense index, e.g.
int8 or binary codes) proposes a shortlist, then a second stage re-ranks it
exactly, either with the float copy of the same vectors (``rerank="exact"``,
the index's ``rescore``) or by late interaction (``rerank=(multivector
encoder, MultiVectorIndex)``, MaxSim over the shortlist). The shortlist size
is a search argument, not index state.

User ids (str or int) map to consecutive int64 ids inside the indexes; the
texts are kept for display.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ._persist import _fsync_dir
from .encoders import Encoder, EncoderConfig, _check_texts

__all__ = ["Retriever", "Hit"]

FORMAT_NAME = "flatcoat-retriever"
FORMAT_VERSION = 1
MANIFEST = "retriever.json"

UserId = Union[str, int]


@dataclass(frozen=True)
class Hit:
    """One search result: the user's id, the final-stage score, and the stored text."""

    id: UserId
    score: float
    text: Optional[str]


def _is_multivector_index(index: Any) -> bool:
    return type(index).__name__ == "MultiVectorIndex"


def _default_shortlist(k: int) -> int:
    return max(10 * k, 100)


def _encoder_state(enc: Encoder) -> Dict[str, Any]:
    cfg = dataclasses.asdict(enc.config)
    cfg.pop("kind")
    cfg["skiplist"] = list(cfg["skiplist"])
    return {"name": enc.name, "kind": enc.kind, "config": cfg}


def _encoder_from_state(state: Dict[str, Any], providers) -> Encoder:
    config = dict(state.get("config") or {})
    known = {f.name for f in dataclasses.fields(EncoderConfig)} - {"kind"}
    return Encoder.from_pretrained(
        state["name"], kind=state["kind"], providers=providers, **{k: v for k, v in config.items() if k in known}
    )


class Retriever:
    """Texts in, ranked hits out.

    ``encoder``: a dense :class:`Encoder` with a ``DenseIndex`` of the same
    dimension, or a multivector encoder with a ``MultiVectorIndex`` (exact
    MaxSim, single stage). ``rerank``: ``None``; ``"exact"`` (the dense index
    must be built with ``keep_float=True``; its quantized scan is re-ranked
    with float vectors); or ``(multivector_encoder, MultiVectorIndex)``.
    Indexes must be empty: :meth:`add` fills them.

    >>> import flatcoat                                                    # doctest: +SKIP
    >>> enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2")          # doctest: +SKIP
    >>> index = flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True)  # doctest: +SKIP
    >>> r = flatcoat.Retriever(enc, index, rerank="exact")                 # doctest: +SKIP
    >>> r.add(["csv: read and write CSV files", "argparse: command-line parsing"], ids=["csv", "argparse"])  # doctest: +SKIP
    >>> r.search("parse command line options", k=1)[0].id                  # doctest: +SKIP
    'argparse'
    """

    def __init__(self, encoder: Encoder, index: Any, rerank: Any = None):
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder must be a flatcoat.Encoder, got {type(encoder).__name__}")
        for name in ("add", "search", "save"):
            if not callable(getattr(index, name, None)):
                raise TypeError(f"index must be a flatcoat index (DenseIndex or MultiVectorIndex), got {type(index).__name__}")
        mv_index = _is_multivector_index(index)
        if encoder.kind == "multivector" and not mv_index:
            raise ValueError("a multivector encoder needs a MultiVectorIndex; use a dense encoder with a DenseIndex")
        if encoder.kind == "dense" and mv_index:
            raise ValueError("a MultiVectorIndex needs Encoder.from_pretrained(..., kind='multivector')")
        if getattr(index, "dim", encoder.dim) != encoder.dim:
            raise ValueError(f"index dim {index.dim} does not match the encoder's dim {encoder.dim}")
        if len(index) != 0:
            raise ValueError(
                f"index already holds {len(index)} vectors; pass an empty index (Retriever.add encodes and adds texts)"
            )
        self._rerank_kind: Optional[str] = None
        self._rerank_encoder: Optional[Encoder] = None
        self._rerank_index: Any = None
        if rerank is None:
            pass
        elif isinstance(rerank, str):
            if rerank != "exact":
                raise ValueError(f"rerank must be None, 'exact' or (multivector encoder, MultiVectorIndex), got {rerank!r}")
            if mv_index:
                raise ValueError("rerank='exact' applies to a quantized DenseIndex; MaxSim search is already exact")
            if not getattr(index, "keep_float", False):
                raise ValueError("rerank='exact' needs a DenseIndex built with keep_float=True")
            self._rerank_kind = "exact"
        elif isinstance(rerank, tuple) and len(rerank) == 2:
            r_enc, r_index = rerank
            if mv_index:
                raise ValueError("late-interaction rerank needs a dense first stage (a DenseIndex)")
            if not isinstance(r_enc, Encoder) or r_enc.kind != "multivector":
                raise TypeError("rerank[0] must be an Encoder with kind='multivector'")
            if not _is_multivector_index(r_index):
                raise TypeError(f"rerank[1] must be a MultiVectorIndex, got {type(r_index).__name__}")
            if getattr(r_index, "dim", r_enc.dim) != r_enc.dim:
                raise ValueError(f"rerank index dim {r_index.dim} does not match its encoder's dim {r_enc.dim}")
            if len(r_index) != 0:
                raise ValueError("the rerank MultiVectorIndex must be empty (Retriever.add fills it)")
            self._rerank_kind = "multivector"
            self._rerank_encoder, self._rerank_index = r_enc, r_index
        else:
            raise TypeError("rerank must be None, 'exact' or a (multivector encoder, MultiVectorIndex) tuple")
        self.encoder = encoder
        self.index = index
        self._ids: List[UserId] = []
        self._texts: List[str] = []
        self._lookup: Dict[UserId, int] = {}

    # --------------------------------------------------------------- content
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> List[UserId]:
        return list(self._ids)

    @property
    def rerank(self) -> Optional[str]:
        return self._rerank_kind

    def text(self, id: UserId) -> str:
        """The stored text of a document."""
        try:
            return self._texts[self._lookup[id]]
        except KeyError:
            raise KeyError(f"id {id!r} is not in this retriever") from None

    def _check_ids(self, ids: Any, n: int) -> List[UserId]:
        if ids is None:
            start = len(self._ids)
            out: List[UserId] = list(range(start, start + n))
        else:
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
        """Encode and index documents; returns their ids (default: consecutive integers)."""
        items = _check_texts(texts)
        user_ids = self._check_ids(ids, len(items))
        internal = np.arange(len(self._ids), len(self._ids) + len(items), dtype=np.int64)
        vecs = self.encoder.encode_documents(items, batch_size=batch_size)
        second = None
        if self._rerank_kind == "multivector":
            second = self._rerank_encoder.encode_documents(items, batch_size=batch_size)
        self.index.add(vecs, ids=internal)
        if second is not None:
            try:
                self._rerank_index.add(second, ids=internal)
            except BaseException:
                self.index.remove(internal)  # keep both stages in step
                raise
        for off, uid in enumerate(user_ids):
            self._lookup[uid] = int(internal[off])
        self._ids.extend(user_ids)
        self._texts.extend(items)
        return user_ids

    # ---------------------------------------------------------------- search
    def search(
        self,
        queries: Union[str, Sequence[str]],
        k: int = 10,
        instruction: Optional[str] = None,
        shortlist: Optional[int] = None,
        batch_size: int = 32,
    ) -> Union[List[Hit], List[List[Hit]]]:
        """Top-``k`` hits per query, best first.

        ``queries``: a list of strings (returns one list of :class:`Hit` per
        query) or a single string (returns its list of hits). ``instruction``
        is applied to the queries through the encoder's template.
        ``shortlist``: how many first-stage candidates the rerank stage sees
        (default ``max(10 * k, 100)``); ignored without a rerank stage.
        """
        single = isinstance(queries, str)
        items = _check_texts([queries] if single else queries, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if shortlist is not None:
            if isinstance(shortlist, bool) or not isinstance(shortlist, (int, np.integer)) or shortlist < k:
                raise ValueError(f"shortlist must be an integer >= k ({k}), got {shortlist!r}")
            shortlist = int(shortlist)
        if len(self) == 0:
            raise ValueError("the retriever is empty; add documents first")
        depth = shortlist if shortlist is not None else _default_shortlist(k)
        from . import cuda_encoders

        on_gpu = (cuda_encoders.session_device(self.encoder.session) is not None
                  and getattr(self.index, "device", "cpu") != "cpu"
                  and (self._rerank_kind != "multivector" or getattr(self._rerank_index, "device", "cpu") != "cpu"))
        if on_gpu:  # embeddings stay on the GPU: IO binding straight into the device index
            q = cuda_encoders.encode_on_device(self.encoder, items, "query", instruction, batch_size)
        else:
            q = self.encoder.encode_queries(items, instruction=instruction, batch_size=batch_size)
        if self._rerank_kind == "exact":
            scores, ids = self.index.search(q, k=k, rescore=max(depth, k))
        elif self._rerank_kind == "multivector":
            _, cand = self.index.search(q, k=depth)
            qmv = (cuda_encoders.encode_on_device(self._rerank_encoder, items, "query", instruction, batch_size)
                   if on_gpu and cuda_encoders.session_device(self._rerank_encoder.session) is not None
                   else self._rerank_encoder.encode_queries(items, instruction=instruction, batch_size=batch_size))
            scores, ids = self._rerank_index.search(qmv, k=k, candidates=cand)
        else:
            scores, ids = self.index.search(q, k=k)
        out = [self._hits(scores[i], ids[i]) for i in range(len(items))]
        return out[0] if single else out

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Hit]:
        hits = []
        from .cuda_encoders import to_numpy

        for s, i in zip(to_numpy(scores).tolist(), to_numpy(ids).tolist()):
            if i < 0:
                continue  # fewer documents than k
            hits.append(Hit(self._ids[i], float(s), self._texts[i]))
        return hits

    # ----------------------------------------------------------- persistence
    def save(self, path: "str | os.PathLike[str]") -> None:
        """Write the retriever to directory ``path`` atomically (temp dir, fsync, rename).

        Holds ``retriever.json`` (encoder names and configs, rerank kind),
        ``ids.json``, ``texts.json``, ``index/`` and, with a late-interaction
        rerank, ``rerank/``. An existing retriever directory is replaced.
        """
        target = Path(path)
        if target.exists() and not (target / MANIFEST).is_file():
            raise FileExistsError(f"{target} exists and is not a flatcoat retriever; remove it or choose another path")
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            self.index.save(staging / "index")
            if self._rerank_index is not None:
                self._rerank_index.save(staging / "rerank")
            _write_json(staging / "ids.json", self._ids)
            _write_json(staging / "texts.json", self._texts)
            manifest = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "count": len(self),
                "encoder": _encoder_state(self.encoder),
                "rerank": self._rerank_kind,
                "rerank_encoder": _encoder_state(self._rerank_encoder) if self._rerank_encoder else None,
            }
            _write_json(staging / MANIFEST, manifest)  # written last: its presence marks a complete directory
            _fsync_dir(staging)
            if target.exists():
                old = parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
                os.rename(target, old)
                os.rename(staging, target)
                staging = old
            else:
                os.rename(staging, target)
                staging = None
            _fsync_dir(parent)
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(
        cls,
        path: "str | os.PathLike[str]",
        mmap: bool = True,
        encoder: Optional[Encoder] = None,
        rerank_encoder: Optional[Encoder] = None,
        providers=None,
    ) -> "Retriever":
        """Load a directory written by :meth:`save`; encoders are rebuilt from the saved names and configs
        unless given."""
        from . import load as load_index
        from ._persist import IndexFormatError

        try:
            from . import multivector  # noqa: F401  (registers the MultiVectorIndex loader)
        except ImportError:
            pass
        root = Path(path)
        man = root / MANIFEST
        if not root.is_dir() or not man.is_file():
            raise IndexFormatError(f"{root}: not a flatcoat retriever directory ({MANIFEST} is missing)")
        try:
            meta = json.loads(man.read_text(encoding="utf-8"))
            ids = json.loads((root / "ids.json").read_text(encoding="utf-8"))
            texts = json.loads((root / "texts.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{root}: unreadable retriever files ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"{man}: not a flatcoat retriever manifest")
        version = meta.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise IndexFormatError(f"{man}: format version {version!r} is newer than this flatcoat reads; upgrade flatcoat")
        count = meta.get("count")
        if not (isinstance(ids, list) and isinstance(texts, list) and len(ids) == len(texts) == count):
            raise IndexFormatError(f"{root}: ids.json, texts.json and the manifest disagree on the document count")
        index = load_index(root / "index", mmap=mmap)
        if len(index) != count:
            raise IndexFormatError(f"{root}/index holds {len(index)} vectors, the manifest says {count}")
        enc = encoder if encoder is not None else _encoder_from_state(meta["encoder"], providers)
        rerank: Any = meta.get("rerank")
        if rerank == "multivector":
            r_index = load_index(root / "rerank", mmap=mmap)
            if len(r_index) != count:
                raise IndexFormatError(f"{root}/rerank holds {len(r_index)} documents, the manifest says {count}")
            r_enc = rerank_encoder if rerank_encoder is not None else _encoder_from_state(meta["rerank_encoder"], providers)
        # The indexes are already filled, so __init__ (which wants empty ones) is bypassed.
        self = cls.__new__(cls)
        self.encoder, self.index = enc, index
        self._rerank_kind = rerank
        self._rerank_encoder = r_enc if rerank == "multivector" else None
        self._rerank_index = r_index if rerank == "multivector" else None
        if enc.dim != getattr(index, "dim", enc.dim):
            raise IndexFormatError(f"{root}: the index dim {index.dim} does not match the encoder's dim {enc.dim}")
        self._ids = [i for i in ids]
        self._texts = [str(t) for t in texts]
        self._lookup = {uid: n for n, uid in enumerate(self._ids)}
        if len(self._lookup) != count:
            raise IndexFormatError(f"{root}/ids.json: duplicate ids")
        return self


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
