"""Text encoders over ONNX Runtime and the ``tokenizers`` package.

One class, :class:`Encoder`, in two kinds:

- ``"dense"``: one vector per text, pooled from the model's token states
  (cls | mean | last-token | weighted-mean), optionally L2-normalised;
- ``"multivector"``: one vector per kept token (late interaction, ColBERT
  style): optional query/document markers, query augmentation with [MASK],
  a projection matrix, a punctuation skiplist for documents, per-token L2
  normalisation.

An encode is three steps, each written once: :meth:`Encoder.batches` turns
texts into padded, length-sorted :class:`Batch` es with their model feeds;
the ONNX session runs a batch; :meth:`Encoder.pool` turns the model output
into vectors. ``pool`` takes numpy or CuPy arrays (``xp``), so the GPU path
(``flatcoat.cuda_encoders``, which runs the session with IO binding) reuses
the first and last steps as they are.

The configuration format (``flatcoat.json`` and the sentence-transformers
files it can be derived from) is documented in ``docs/encoders.md``. The
bundled default ``"all-MiniLM-L6-v2"`` used as ``kind="multivector"`` is a
*stand-in*: per-token MiniLM states, not a trained ColBERT.

onnxruntime, tokenizers and tqdm are imported lazily so ``import flatcoat``
works without the ``text`` extra.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _onnx
from . import models as _models
from ._onnx import check_providers, onnxruntime_conflict
from ._validate import as_bool, as_int

__all__ = [
    "Encoder", "EncoderConfig", "Batch", "encode_documents_shared", "check_texts", "pool_tokens",
    "l2_normalize", "check_providers", "onnxruntime_conflict", "POOLINGS", "KINDS", "SIDES",
]

POOLINGS = ("cls", "mean", "last-token", "weighted-mean")
KINDS = ("dense", "multivector")
SIDES = ("query", "document")

# Encodes of at least this many texts show a progress bar (when stderr is a terminal).
_PROGRESS_MIN_TEXTS = 512
# On CPU a batch of 32 x 256 tokens spills attention and FFN activations out of cache; capping
# rows x padded length keeps long-text batches small while short texts still batch up to batch_size.
_CPU_MAX_BATCH_TOKENS = 2048


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that turns texts into vectors for one model and one kind.

    Built from a model's ``flatcoat.json`` (top-level keys plus the section
    named after the kind), see ``docs/encoders.md``.
    """

    kind: str = "dense"
    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int = 512
    document_max_length: int = 512
    query_prefix: str = ""
    document_prefix: str = ""
    instruction_template: str = "{instruction} {text}"
    output: Optional[str] = None
    # multivector only
    query_marker: Optional[str] = None
    document_marker: Optional[str] = None
    query_augmentation: bool = False
    attend_to_mask_tokens: bool = False
    mask_token: str = "[MASK]"
    projection: Optional[str] = None
    skiplist: Tuple[str, ...] = ()
    stand_in: bool = False

    @classmethod
    def from_dict(cls, cfg: Dict[str, Any], kind: str, max_positions: Optional[int] = None) -> "EncoderConfig":
        """Merge the shared keys with the ``kind`` section and validate them.

        A length the configuration leaves at its default is capped at the
        model's ``max_positions``; one it sets is checked by the Encoder.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        names = {f.name for f in fields(cls)} - {"kind"}
        shared = {k: v for k, v in cfg.items() if k in names}
        section = cfg.get(kind)
        values: Dict[str, Any] = dict(shared)
        if kind == "multivector":
            # Sensible per-token defaults; a model without a "multivector" section is used as a stand-in.
            dense = cfg.get("dense") or {}
            values.setdefault("query_max_length", 32)
            values.setdefault("document_max_length", dense.get("document_max_length", 256))
            if section is None:
                values["stand_in"] = True
        if section is not None:
            if not isinstance(section, dict):
                raise ValueError(f"config section {kind!r} must be a JSON object, got {type(section).__name__}")
            unknown = sorted(set(section) - names)
            if unknown:
                raise ValueError(
                    f"unknown key(s) {unknown} in config section {kind!r}; known keys: {sorted(names)}"
                )
            values.update(section)
        if "skiplist" in values:
            values["skiplist"] = tuple(values["skiplist"])
        if max_positions is not None:
            for name in ("query_max_length", "document_max_length"):
                if name not in shared and name not in (section or {}):
                    values[name] = min(values.get(name, getattr(cls, name)), max_positions)
        out = cls(kind=kind, **values)
        out._validate()
        return out

    def _validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("query_max_length", "document_max_length"):
            as_int(getattr(self, name), name, 2)
        for name in ("normalize", "query_augmentation", "attend_to_mask_tokens", "stand_in"):
            as_bool(getattr(self, name), name)
        for name in ("query_prefix", "document_prefix", "instruction_template", "mask_token"):
            if not isinstance(getattr(self, name), str):  # the wrong type: a TypeError, as for the integers
                raise TypeError(f"{name}: expected a string, got {type(getattr(self, name)).__name__} "
                                f"{getattr(self, name)!r}")
        for name in ("output", "query_marker", "document_marker", "projection"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected a string or None, got {type(getattr(self, name)).__name__} "
                                f"{getattr(self, name)!r}")
        if "{text}" not in self.instruction_template or "{instruction}" not in self.instruction_template:
            raise ValueError(
                f"instruction_template must contain {{instruction}} and {{text}}, got {self.instruction_template!r}"
            )
        if not all(isinstance(s, str) for s in self.skiplist):
            raise TypeError("skiplist: expected a list of strings (tokens or characters)")


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # only a lone surrogate cannot be encoded
            raise ValueError(
                f"{name}: contains a lone surrogate ({text[exc.start]!r} at character {exc.start}), which is not "
                "text; decode the source with errors='replace', or drop the character"
            ) from None
    return text


def check_texts(texts: Any, name: str = "texts") -> List[str]:
    """``texts`` as a non-empty list of str; each failure names the argument and the position.

    >>> check_texts(["a", "b"])
    ['a', 'b']
    """
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings; wrap a single text in a list: [{texts[:30]!r}]")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}") from None
    if not items:
        raise ValueError(f"{name} is empty; pass at least one text")
    for i, t in enumerate(items):
        _check_text(t, f"{name}[{i}]")
    return items


def pool_tokens(hidden, mask, pooling: str, xp=np):
    """Pools token states ``(b, t, h)`` into ``(b, h)`` float32, ``mask`` ``(b, t)`` marking real tokens.

    ``xp`` is the array module of ``hidden`` and ``mask`` (numpy or CuPy).
    """
    hidden = hidden.astype(xp.float32, copy=False)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last-token":
        # Right padding: the last real token sits at length - 1.
        last = mask.sum(axis=1) - 1
        return hidden[xp.arange(hidden.shape[0]), last]
    m = mask.astype(xp.float32)
    if pooling == "weighted-mean":  # position weights 1..T (SGPT)
        m = m * xp.arange(1, m.shape[1] + 1, dtype=xp.float32)
    summed = xp.matmul(m[:, None, :], hidden)[:, 0]
    return summed / xp.maximum(m.sum(axis=1, keepdims=True), 1e-9)


def l2_normalize(x, xp=np):
    """Rows of ``x`` scaled to unit L2 norm along the last axis (a zero row stays zero)."""
    return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _load_tokenizer(path: Path, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    # tokenizer.json files often carry fixed padding/truncation (MiniLM's: 128): replace them.
    # Padding is done per length-sorted batch in numpy, so the tokenizer itself does not pad.
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


@dataclass(frozen=True, eq=False)
class Batch:
    """One padded batch of an encode: row ``i`` is text ``positions[i]`` of the call.

    ``input_ids``, ``attention_mask``: ``(b, width)`` int64 (host memory);
    ``keep``: ``(b, width)`` bool, the token rows a multivector encoder
    outputs (before its document skiplist); ``feeds``: the model inputs by
    name, ready for ``session.run``.
    """

    side: str
    positions: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    keep: np.ndarray
    feeds: Dict[str, np.ndarray]


class Encoder:
    """Texts in, vectors out, through an ONNX model.

    Use :meth:`from_pretrained`. ``encode_queries`` / ``encode_documents``
    return, for ``kind="dense"``, an ``(n, dim)`` float32 array and, for
    ``kind="multivector"``, a list of ``n`` arrays of shape ``(t_i, dim)``.

    >>> enc = Encoder.from_pretrained("all-MiniLM-L6-v2")          # doctest: +SKIP
    >>> enc.encode_queries(["what is a csv file"]).shape            # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self,
        files: _models.ModelFiles,
        config: EncoderConfig,
        providers: Optional[Sequence[Any]] = None,
        threads: Optional[int] = None,
        progress: Optional[bool] = None,
        max_batch_tokens: Optional[int] = None,
    ):
        self.files = files
        self.config = config
        self.kind = config.kind
        self.name = files.name
        self.progress = None if progress is None else as_bool(progress, "progress")
        limit = files.max_positions
        if limit is not None:
            # A longer sequence would index past the position embeddings: onnxruntime fails at the
            # first long text. Markers and [MASK] augmentation are within max_length.
            for name in ("query_max_length", "document_max_length"):
                if getattr(config, name) > limit:
                    raise ValueError(
                        f"{name}: {getattr(config, name)} is beyond the {limit} positions of model {files.name!r}; "
                        f"pass at most {limit}"
                    )
        self.session = _onnx.session(files.model, providers, threads)
        self.providers = tuple(self.session.get_providers())
        if max_batch_tokens is None and self.providers[:1] == (_onnx.CPU,):
            max_batch_tokens = _CPU_MAX_BATCH_TOKENS
        self.max_batch_tokens = None if max_batch_tokens is None else as_int(max_batch_tokens, "max_batch_tokens", 1)
        self._input_names = [i.name for i in self.session.get_inputs()]
        supported = {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
        unknown = [n for n in self._input_names if n not in supported]
        if unknown or "input_ids" not in self._input_names:
            raise ValueError(
                f"{files.model}: the model declares inputs {self._input_names}; flatcoat feeds "
                f"input_ids, attention_mask, token_type_ids and position_ids only"
            )
        outputs = self.session.get_outputs()
        out_names = [o.name for o in outputs]
        if config.output is not None:
            if config.output not in out_names:
                raise ValueError(f"config output {config.output!r} is not a model output; outputs: {out_names}")
            self._output = config.output
        else:
            self._output = "last_hidden_state" if "last_hidden_state" in out_names else out_names[0]
        out_shape = outputs[out_names.index(self._output)].shape
        if self.kind == "multivector" and len(out_shape) != 3:
            raise ValueError(
                f"kind='multivector' needs per-token model output, but {self._output!r} has shape {out_shape}"
            )
        self._tok_query = _load_tokenizer(files.tokenizer, config.query_max_length - bool(config.query_marker))
        self._tok_doc = _load_tokenizer(files.tokenizer, config.document_max_length - bool(config.document_marker))
        self._pad_id = self._token_id_or(self._tok_doc, "[PAD]", 0)
        self._marker_ids = {
            side: self._token_id(marker, f"{side}_marker")
            for side, marker in (("query", config.query_marker), ("document", config.document_marker))
            if marker
        }
        self._mask_id = self._token_id(config.mask_token, "mask_token") if config.query_augmentation else None
        self._skip_ids = self._skiplist_ids(config.skiplist)
        self._projection = self._load_projection(config.projection)
        hidden = out_shape[-1] if isinstance(out_shape[-1], int) else None
        if self._projection is not None:
            if hidden is not None and self._projection.shape[0] != hidden:
                raise ValueError(
                    f"projection {config.projection} has shape {self._projection.shape}; "
                    f"its first dimension must be the model's hidden size {hidden}"
                )
            self.dim = int(self._projection.shape[1])
        else:
            self.dim = int(hidden) if hidden is not None else int(self._probe_dim())

    # ----------------------------------------------------------------- setup
    @classmethod
    def from_pretrained(
        cls,
        path_or_name: "str | os.PathLike[str]" = _models.DEFAULT_MODEL,
        kind: str = "dense",
        providers: Optional[Sequence[Any]] = None,
        *,
        threads: Optional[int] = None,
        progress: Optional[bool] = None,
        max_batch_tokens: Optional[int] = None,
        **overrides: Any,
    ) -> "Encoder":
        """Load a model directory, a registered name or a Hugging Face Hub repository.

        ``kind`` is ``"dense"`` or ``"multivector"``; ``providers`` a list of
        onnxruntime execution providers (default CPU); ``threads`` the
        intra-op thread count (default: all cores); ``max_batch_tokens`` caps
        rows x padded length per batch (default 2048 on CPU, none elsewhere;
        ``batch_size`` still caps the rows); keyword ``overrides``
        replace config fields, e.g. ``query_max_length=64`` (at most the
        model's position limit).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        files = _models.resolve(path_or_name)
        config = EncoderConfig.from_dict(files.config, kind, files.max_positions)
        if overrides:
            unknown = sorted(set(overrides) - {f.name for f in fields(EncoderConfig)} - {"kind"})
            if unknown:
                raise TypeError(f"unknown config override(s) {unknown}")
            if "skiplist" in overrides:
                overrides["skiplist"] = tuple(overrides["skiplist"])
            config = replace(config, **overrides)
            config._validate()
        return cls(files, config, providers=providers, threads=threads, progress=progress,
                   max_batch_tokens=max_batch_tokens)

    def _token_id(self, token: str, what: str) -> int:
        tid = self._tok_doc.token_to_id(token)
        if tid is None:
            raise ValueError(f"{what} {token!r} is not in the vocabulary of {self.files.tokenizer}")
        return int(tid)

    @staticmethod
    def _token_id_or(tok, token: str, default: int) -> int:
        tid = tok.token_to_id(token)
        return default if tid is None else int(tid)

    def _skiplist_ids(self, skiplist: Tuple[str, ...]) -> Optional[np.ndarray]:
        if not skiplist:
            return None
        ids = []
        for s in skiplist:
            tid = self._tok_doc.token_to_id(s)
            if tid is None:  # a character the vocabulary splits: skip every piece of it
                ids.extend(self._tok_doc.encode(s, add_special_tokens=False).ids)
            else:
                ids.append(tid)
        return np.unique(np.asarray(ids, dtype=np.int64))

    def _load_projection(self, rel: Optional[str]) -> Optional[np.ndarray]:
        if rel is None:
            return None
        path = Path(rel)
        if not path.is_absolute():
            path = self.files.root / path
        if not path.is_file():
            raise ValueError(f"projection matrix {path} does not exist; set \"projection\" to a .npy file")
        p = np.load(path, allow_pickle=False)
        if p.ndim != 2:
            raise ValueError(f"projection {path} must be a 2-D (hidden, dim) matrix, got shape {p.shape}")
        return np.ascontiguousarray(p, dtype=np.float32)

    def _feeds(self, ids: np.ndarray, mask: np.ndarray) -> Dict[str, np.ndarray]:
        feeds = {"input_ids": ids}
        if "attention_mask" in self._input_names:
            feeds["attention_mask"] = mask
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        if "position_ids" in self._input_names:
            feeds["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        return feeds

    def _probe_dim(self) -> int:
        ids = np.array([[self._pad_id, self._pad_id]], dtype=np.int64)
        return int(self.session.run([self._output], self._feeds(ids, np.ones_like(ids)))[0].shape[-1])

    def __repr__(self) -> str:
        label = ", stand-in (not a trained late-interaction model)" if self.kind == "multivector" and self.config.stand_in else ""
        return f"Encoder({self.name!r}, kind={self.kind!r}, dim={self.dim}{label})"

    # ---------------------------------------------------------------- public
    @property
    def device(self) -> str:
        """Where the model runs: "cpu", or "cuda:N" when CUDA is the session's first provider."""
        return _onnx.session_device(self.session)

    @property
    def output_name(self) -> str:
        """The model output :meth:`pool` reads."""
        return self._output

    def format_query(self, text: str, instruction: Optional[str] = None) -> str:
        """The text the model sees for a query: prefix, then the instruction template if any."""
        text = self.config.query_prefix + text
        if instruction is not None:
            text = self.config.instruction_template.format(instruction=instruction, text=text)
        return text

    def _prepare(self, texts: Any, side: str, instruction: Optional[str], name: str) -> List[str]:
        """Validated texts as the model sees them (prefixes, instruction)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        items = check_texts(texts, name)
        if instruction is not None:
            if side != "query":
                raise ValueError("instruction applies to queries only")
            _check_text(instruction, "instruction")
        if side == "query":
            return [self.format_query(t, instruction) for t in items]
        prefix = self.config.document_prefix
        return [prefix + t for t in items] if prefix else items

    def batches(self, texts: Sequence[str], side: str, *, instruction: Optional[str] = None,
                batch_size: int = 32, name: str = "texts") -> Iterator[Batch]:
        """Tokenizes ``texts`` (queries or documents, ``side``) into length-sorted :class:`Batch` es.

        Each batch has little padding (its longest text sets its width) and at
        most ``batch_size`` rows (and ``max_batch_tokens`` rows x width).
        Run ``session.run([encoder.output_name], batch.feeds)`` and pass the
        output to :meth:`pool`.
        """
        items = self._prepare(texts, side, instruction, name)
        return self._batches(items, side, as_int(batch_size, "batch_size", 1))

    def _batches(self, items: List[str], side: str, batch_size: int) -> Iterator[Batch]:
        tok = self._tok_query if side == "query" else self._tok_doc
        encodings = tok.encode_batch(items)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        marker = self._marker_ids.get(side)
        augment = side == "query" and self._mask_id is not None
        start = 0
        while start < len(order):
            # Longest first: the batch's first text sets its padded width.
            width = int(lengths[order[start]])
            if augment:
                width = self.config.query_max_length - (marker is not None)
            rows = batch_size
            if self.max_batch_tokens is not None:
                rows = max(1, min(batch_size, self.max_batch_tokens // max(width, 1)))
            pos = order[start : start + rows]
            start += rows
            ids = np.full((len(pos), width), self._pad_id, dtype=np.int64)
            for row, p in enumerate(pos):
                ids[row, : lengths[p]] = encodings[p].ids
            mask = (np.arange(width) < lengths[pos][:, None]).astype(np.int64)
            if marker is not None:  # ColBERT puts the marker right after [CLS]
                ids = np.insert(ids, 1, marker, axis=1)
                mask = np.insert(mask, 1, 1, axis=1)
            if augment:  # pad with [MASK]: the query is expanded to a fixed length
                keep = np.ones(mask.shape, dtype=bool)
                ids[~mask.astype(bool)] = self._mask_id
                if self.config.attend_to_mask_tokens:
                    mask[:] = 1
            else:
                keep = mask.astype(bool)
            yield Batch(side, pos, ids, mask, keep, self._feeds(ids, mask))

    def pool(self, hidden, batch: Batch, xp=np):
        """Vectors from the model output ``hidden`` of ``batch`` (numpy, or CuPy with ``xp=cupy``).

        Dense: ``(b, dim)`` float32, row ``i`` for text ``batch.positions[i]``.
        Multivector: ``(rows, counts)``: the kept token vectors ``(sum(counts),
        dim)`` float32, packed text after text in batch order, and ``counts``
        ``(b,)`` int64 (host).
        """
        hidden = hidden.astype(xp.float32, copy=False)
        if self.kind == "dense":
            if hidden.ndim == 2:  # the model pools itself (e.g. a sentence_embedding output)
                vecs = hidden
            else:
                vecs = pool_tokens(hidden, xp.asarray(batch.attention_mask), self.config.pooling, xp)
        else:
            keep = batch.keep
            if batch.side == "document" and self._skip_ids is not None:
                keep = keep & ~np.isin(batch.input_ids, self._skip_ids)
            # Boolean selection drops padding (and skipped punctuation) in one step, text order kept.
            vecs = hidden[xp.asarray(keep)]
        if self._projection is not None:
            vecs = vecs @ xp.asarray(self._projection)
        if self.config.normalize:
            vecs = l2_normalize(vecs, xp)
        vecs = xp.ascontiguousarray(vecs, dtype=xp.float32)
        return vecs if self.kind == "dense" else (vecs, keep.sum(axis=1).astype(np.int64))

    def encode_queries(
        self,
        texts: Sequence[str],
        instruction: Optional[str] = None,
        batch_size: int = 32,
        progress: Optional[bool] = None,
    ) -> Union[np.ndarray, List[np.ndarray]]:
        """Encode queries; ``instruction`` (a task description) goes through the model's template.

        Dense: ``(n, dim)`` float32. Multivector: list of ``(t_i, dim)`` float32.
        """
        return self._encode(self._prepare(texts, "query", instruction, "texts"), "query", batch_size, progress)

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, progress: Optional[bool] = None
    ) -> Union[np.ndarray, List[np.ndarray]]:
        """Encode documents (no instruction, the document prefix only). Shapes as :meth:`encode_queries`."""
        return self._encode(self._prepare(texts, "document", None, "texts"), "document", batch_size, progress)

    # -------------------------------------------------------------- pipeline
    def _encode(self, items: List[str], side: str, batch_size: Any, progress: Optional[bool],
                partners: Sequence["Encoder"] = ()):
        """Run the model over length-sorted batches of prepared texts; ``partners`` (same model and
        tokenization) pool the same forward pass their own way."""
        batch_size = as_int(batch_size, "batch_size", 1)
        show = self.progress if progress is None else as_bool(progress, "progress")
        if show is None:
            show = len(items) >= _PROGRESS_MIN_TEXTS and sys.stderr.isatty()
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=f"encoding {side}s", unit="text", disable=False)
        encs = (self,) + tuple(partners)
        outs = [
            np.empty((len(items), e.dim), dtype=np.float32) if e.kind == "dense" else [None] * len(items) for e in encs
        ]
        try:
            for batch in self._batches(items, side, batch_size):
                hidden = self.session.run([self._output], batch.feeds)[0]
                for e, out in zip(encs, outs):
                    if e.kind == "dense":
                        out[batch.positions] = e.pool(hidden, batch)
                    else:
                        rows, counts = e.pool(hidden, batch)
                        for p, vecs in zip(batch.positions, np.split(rows, np.cumsum(counts)[:-1])):
                            out[p] = vecs
                if bar is not None:
                    bar.update(len(batch.positions))
        finally:
            if bar is not None:
                bar.close()
        return outs if partners else outs[0]


def encode_documents_shared(
    encoders: Sequence[Encoder], texts: Sequence[str], batch_size: int = 32, progress: Optional[bool] = None
) -> List[Union[np.ndarray, List[np.ndarray]]]:
    """Encode documents for several encoders, sharing one forward pass where they can.

    Encoders of the same model whose documents are tokenized alike (same session, tokenizer,
    document length and prefix, no document marker), e.g. a dense MiniLM and its multi-vector
    stand-in, pool one run of the model; any other encoder runs on its own. Returns one result per
    encoder, as :meth:`Encoder.encode_documents` would.
    """
    encoders = list(encoders)
    if not encoders or not all(isinstance(e, Encoder) for e in encoders):
        raise TypeError("encoders must be a non-empty list of flatcoat.Encoder")
    items = check_texts(texts)

    def key(e: Encoder):
        c = e.config
        if c.document_marker:
            return ("alone", id(e))
        return (id(e.session), str(e.files.tokenizer), c.document_max_length, c.document_prefix)

    results: List[Any] = [None] * len(encoders)
    groups: Dict[Any, List[int]] = {}
    for i, e in enumerate(encoders):
        groups.setdefault(key(e), []).append(i)
    for members in groups.values():
        lead = encoders[members[0]]
        docs = lead._prepare(items, "document", None, "texts")
        outs = lead._encode(docs, "document", batch_size, progress, partners=[encoders[i] for i in members[1:]])
        if len(members) == 1:
            outs = [outs]
        for i, out in zip(members, outs):
            results[i] = out
    return results
