"""Reading document collections: JSON lines, the text of a document, one rule for empty documents.

A corpus is a JSONL file, one object a line: ``_id`` (or ``id``; a string or
an integer; the line's position when absent), ``title`` (optional) and
``text``. A document is its title and text joined by a space and stripped
(what BEIR encodes); one whose title and text are both blank is *empty*:
:func:`read_corpus` skips and counts it, and so does
:func:`flatcoat.eval.evaluate_dataset`, so ``flatcoat index`` and
``flatcoat eval`` accept the same files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

__all__ = ["Corpus", "read_corpus", "read_jsonl", "document_fields", "doc_text"]

UserId = Union[str, int]

_BOM = b"\xef\xbb\xbf"


def read_jsonl(path: "str | os.PathLike[str]", what: str = "file") -> Iterator[Tuple[int, dict]]:
    """Yields ``(line_number, object)`` for each non-blank line of a UTF-8 JSONL file.

    Every failure is a ValueError that names the file and the line: a line that
    is not UTF-8 (with the offending byte and its byte offset in the file),
    malformed JSON, or a value that is not a JSON object. A UTF-8 byte-order mark
    at the start of the file is ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    offset = 0  # byte offset of the current line in the file
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM):], start + len(_BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}, "
                    f"byte offset {start + exc.start} of the file); save the file as UTF-8, "
                    f"e.g. iconv -f latin1 -t utf-8"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def document_fields(obj: Mapping[str, Any], path: Path, lineno: int) -> Tuple[str, str]:
    """``(title, text)`` of one corpus line, the rule of :func:`read_corpus` and ``flatcoat eval`` alike.

    ``text`` must be a string, ``title`` a string, absent or null (read as "");
    neither may hold a lone surrogate. Failures are ValueErrors naming the file
    and line. Blank strings are allowed: they make an empty document.
    """
    title, text = obj.get("title"), obj.get("text")
    title = "" if title is None else title
    if not isinstance(text, str) or not isinstance(title, str):
        raise ValueError(f"{path}:{lineno}: each line needs a string field \"text\" (and optionally \"title\")")
    for value in (title, text):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{path}:{lineno}: the document contains a lone surrogate {value[exc.start]!r} "
                             "(an unpaired \\ud800-\\udfff escape); fix or remove it") from None
    return title, text


def doc_text(doc: Mapping[str, str]) -> str:
    """The text BEIR encodes for a document: title + " " + text, stripped ("" for an empty document)."""
    return (doc.get("title", "") + " " + doc.get("text", "")).strip()


@dataclass
class Corpus:
    """The documents of a corpus file, in file order.

    ``ids[i]`` (str or int, unique) names ``texts[i]`` (non-empty); ``skipped``
    holds the ids of the empty documents, which are not in ``ids``.
    """

    ids: List[UserId] = field(default_factory=list)
    texts: List[str] = field(default_factory=list)
    skipped: List[UserId] = field(default_factory=list)
    #: One dict of kept fields per document in ``ids`` (see :func:`read_corpus`'s ``fields``).
    metadata: List[Dict[str, Any]] = field(default_factory=list)
    #: field -> how many values were left out because their type cannot be an attribute.
    dropped: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


#: The fields of a corpus line that make the document itself, never metadata.
DOCUMENT_KEYS = ("_id", "id", "title", "text")


def _attribute_value(value) -> bool:
    """Whether a JSON value can be an attribute: bool, int, float, str or a list of str."""
    if isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _flat_fields(obj: Mapping[str, Any], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted name, value) of a line's fields: nested objects become "a.b" (the Qdrant convention)."""
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flat_fields(value, name + ".")
        else:
            yield name, value


def _line_metadata(obj: Mapping[str, Any], fields, path: Path, lineno: int, dropped: Dict[str, int]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, value in _flat_fields({k: v for k, v in obj.items() if k not in DOCUMENT_KEYS}):
        if fields != "all" and name not in fields:
            continue
        if value is None:
            continue  # a missing value
        if not _attribute_value(value):
            if fields != "all":
                raise ValueError(f"{path}:{lineno}: field {name!r} holds a {type(value).__name__}; metadata values "
                                 "are numbers, booleans, strings or lists of strings")
            dropped[name] = dropped.get(name, 0) + 1
            continue
        out[name] = value
    return out


def read_corpus(path: "str | os.PathLike[str]", fields: "str | Sequence[str] | None" = None) -> Corpus:
    """Reads a JSONL corpus (or a BEIR directory's ``corpus.jsonl``) into a :class:`Corpus`.

    ``fields``: the other fields of each line to keep as metadata
    (``Corpus.metadata``): ``"all"``, a list of names (nested objects are
    named ``"a.b"``), or None (none). Values must be numbers, booleans,
    strings or lists of strings (null is a missing value); with ``"all"`` a
    value of another type is left out and counted in ``Corpus.dropped``, a
    named field holding one is a ValueError naming the line.

    Errors name the file and line: a duplicate or non-string/integer id, a
    missing or non-string ``text``, a text that cannot be encoded (a lone
    surrogate from a ``\\ud800`` escape), and a corpus with no document at all.
    Empty documents are skipped and listed in ``Corpus.skipped``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "corpus.jsonl"
    if fields is not None and fields != "all":
        if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
            raise TypeError(f"fields: expected 'all' or a list of field names, got {fields!r}")
        fields = frozenset(fields)
    out = Corpus()
    seen = set()
    position = 0
    for lineno, obj in read_jsonl(p, "corpus"):
        did = obj.get("_id", obj.get("id", None))
        if did is None:
            did = position
        position += 1
        if isinstance(did, bool) or not isinstance(did, (str, int)):
            raise ValueError(f"{p}:{lineno}: the id must be a string or an integer, got {type(did).__name__}")
        if did in seen:
            raise ValueError(f"{p}:{lineno}: duplicate id {did!r}")
        seen.add(did)
        title, text = document_fields(obj, p, lineno)
        body = doc_text({"title": title, "text": text})
        if body:
            out.ids.append(did)
            out.texts.append(body)
            if fields is not None:
                out.metadata.append(_line_metadata(obj, fields, p, lineno, out.dropped))
        else:
            out.skipped.append(did)
    if not out.ids:
        reason = f"all {len(out.skipped)} documents are empty" if out.skipped else "no JSON lines"
        raise ValueError(f"{p}: the corpus is empty ({reason})")
    return out


def non_empty(ids: List[Any], texts: List[str]) -> Tuple[List[Any], List[str], List[Any]]:
    """``(kept ids, kept texts, skipped ids)``: the same empty-document rule as :func:`read_corpus`."""
    kept = [i for i, t in enumerate(texts) if t]
    skipped = [ids[i] for i, t in enumerate(texts) if not t]
    return [ids[i] for i in kept], [texts[i] for i in kept], skipped
