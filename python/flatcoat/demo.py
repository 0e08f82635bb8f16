"""``flatcoat demo``: the standard library's docstrings as a corpus, searched with the bundled model.

Nothing to download: every Python installation has the corpus, and the
bundled all-MiniLM-L6-v2 encodes it. :func:`stdlib_documents` builds the
corpus; :func:`demo_retriever` encodes and indexes it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import warnings
from typing import Any, List, Optional, Tuple

from ._validate import as_int

__all__ = ["QUERIES", "stdlib_documents", "demo_retriever"]

#: The requests the demo answers when none is given.
QUERIES = (
    "read a csv file",
    "parse command line arguments",
    "download a web page over http",
    "compress data with gzip",
    "run a shell command and capture its output",
    "copy a directory tree",
    "current date and time in UTC",
    "turn a Python object into JSON text",
)

# Never imported: side effects (a browser, the Zen printed), a display, tests, or deprecated shims.
_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "pydoc_data",
    "ensurepip", "distutils", "encodings", "msilib", "xxsubtype", "xxlimited", "xxlimited_35",
}


def _public(name: str) -> bool:
    return not name.startswith("_") and not name.startswith("test") and name not in _SKIP


def _first_paragraph(doc: Optional[str]) -> str:
    if not isinstance(doc, str):
        return ""
    text = inspect.cleandoc(doc).strip()
    return " ".join(text.split("\n\n", 1)[0].split())


def _import(name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # a module this platform lacks, or one that refuses to import here
        return None


def stdlib_documents(max_docs: int) -> Tuple[List[str], List[str]]:
    """``(ids, texts)``, at most ``max_docs`` of each: "module.name: first paragraph of the docstring".

    One document per public standard-library module (and public submodule),
    function and class, each object once (re-exports are skipped), in module
    name order; objects whose docstring's first paragraph is under 12
    characters are left out (nothing to match a request against).
    """
    max_docs = as_int(max_docs, "max_docs", minimum=1)
    ids: List[str] = []
    texts: List[str] = []
    seen_objects = set()
    seen_names = set()

    def add(qualname: str, obj: Any) -> None:
        if id(obj) in seen_objects or qualname in seen_names or len(ids) >= max_docs:
            return
        para = _first_paragraph(getattr(obj, "__doc__", None))
        if len(para) < 12:
            return
        seen_objects.add(id(obj))
        seen_names.add(qualname)
        ids.append(qualname)
        texts.append(f"{qualname}: {para}")

    def visit(modname: str, mod: Any) -> None:
        add(modname, mod)
        names = getattr(mod, "__all__", None)
        if not isinstance(names, (list, tuple)):
            names = [n for n in vars(mod) if not n.startswith("_")]
        for n in names:
            obj = getattr(mod, n, None) if isinstance(n, str) and not n.startswith("_") else None
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                add(f"{modname}.{n}", obj)

    for name in sorted(sys.stdlib_module_names):
        if not _public(name) or len(ids) >= max_docs:
            continue
        mod = _import(name)
        if mod is None:
            continue
        visit(name, mod)
        for info in pkgutil.iter_modules(getattr(mod, "__path__", None) or []):
            if _public(info.name) and len(ids) < max_docs:
                sub = _import(f"{name}.{info.name}")
                if sub is not None:
                    visit(f"{name}.{info.name}", sub)
    return ids, texts


def demo_retriever(ids: List[str], texts: List[str], batch_size: int = 64):
    """A :class:`~flatcoat.Retriever` (bundled MiniLM, f32 DenseIndex) holding ``texts`` under ``ids``."""
    from .dense import DenseIndex
    from .encoders import Encoder
    from .retriever import Retriever

    # Docstring first paragraphs are short: 128 tokens keep nearly all of them whole and encode faster.
    encoder = Encoder.from_pretrained("all-MiniLM-L6-v2", document_max_length=128)
    retriever = Retriever(encoder, DenseIndex(encoder.dim, metric="ip", storage="f32"))
    retriever.add(texts, ids=ids, batch_size=batch_size)
    return retriever
