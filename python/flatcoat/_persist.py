"""Persistence: everything flatcoat saves is a directory written by one writer.

A directory holds ``manifest.json`` (format, version, kind, the object's
parameters) and the files it lists, each with its size and CRC-32: ``.npy``
arrays, JSON documents, and child directories (flatcoat directories of their
own, e.g. the indexes inside a Retriever, listed by their manifest's size and
CRC-32). :func:`write_directory` stages the directory beside the target, lets
the caller fill it, fsyncs every file, and swaps it in atomically (two renames
where the OS has no atomic exchange, recovered by the next load).
:func:`read_directory` verifies the manifest, each file's size and CRC-32 and
each array's header before any data is mapped or read, so a corrupt file gives
:class:`IndexFormatError`, never a crash or an allocation sized by an
unverified field. :func:`load` opens any registered kind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import json
import math
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping

import numpy as np

from ._validate import as_bool

FORMAT_NAME = "flatcoat"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 22

_LOADERS: Dict[str, Callable[[dict, Dict[str, np.ndarray]], object]] = {}
_OPENERS: Dict[str, Callable[..., object]] = {}
#: Kinds whose module registers them on import but is not imported with flatcoat (optional dependencies).
_LAZY_KINDS = {"sharded": "flatcoat.distributed"}


class IndexFormatError(ValueError):
    """A flatcoat directory that cannot be read: missing, corrupt, or of an unknown version."""


def register_kind(kind: str, loader: Callable[[dict, Dict[str, np.ndarray]], object]) -> None:
    """Registers ``loader(meta, arrays) -> index`` for manifests of this ``kind`` (arrays only)."""
    _LOADERS[kind] = loader


def register_opener(kind: str, opener: Callable[..., object]) -> None:
    """Registers ``opener(saved, *, mmap, verify, device) -> object`` for a ``kind`` whose directory
    holds more than arrays (JSON documents, child directories); ``saved`` is a :class:`SavedDirectory`."""
    _OPENERS[kind] = opener


# ----------------------------------------------------------------------------- writing


class _ChecksummedFile:
    """A write-only file object that keeps a running CRC-32 and byte count."""

    def __init__(self, raw):
        self._raw = raw
        self.crc = 0
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += view.nbytes
        self._raw.write(view)
        return view.nbytes


def _write_array(path: Path, array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    with open(path, "wb") as raw:
        out = _ChecksummedFile(raw)
        np.lib.format.write_array(out, array, allow_pickle=False)
        raw.flush()
        os.fsync(raw.fileno())
    return {
        "file": path.name,
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "size": out.size,
        "crc32": out.crc,
    }


def _write_bytes(path: Path, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "size": len(data), "crc32": zlib.crc32(data)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class DirectoryWriter:
    """Fills a staging directory; every file it writes is fsynced and recorded for the manifest.

    Names are identifiers (so no path can leave the directory) and unique
    across arrays (``<name>.npy``), JSON documents (``<name>.json``) and child
    directories (``<name>/``).
    """

    def __init__(self, root: Path):
        self.root = root
        self._arrays: Dict[str, dict] = {}
        self._json: Dict[str, dict] = {}
        self._children: Dict[str, dict] = {}

    def _claim(self, name: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"name {name!r} must be an identifier")
        if name in self._arrays or name in self._json or name in self._children:
            raise ValueError(f"name {name!r} is used twice in one directory")

    def add_array(self, name: str, array) -> None:
        """Writes ``array`` as ``<name>.npy``."""
        self._claim(name)
        self._arrays[name] = _write_array(self.root / f"{name}.npy", np.asarray(array))

    def add_json(self, name: str, value: Any) -> None:
        """Writes a JSON-serialisable ``value`` as ``<name>.json`` (UTF-8)."""
        self._claim(name)
        data = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._json[name] = _write_bytes(self.root / f"{name}.json", data)

    def add_child(self, name: str, save: Callable[[Path], None]) -> None:
        """Calls ``save(path)`` (e.g. an index's ``save``), which must write a flatcoat directory at
        ``<name>/``; its manifest is checksummed here, its files by that manifest."""
        self._claim(name)
        path = self.root / name
        save(path)
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise ValueError(f"child {name!r} was not saved as a flatcoat directory ({manifest} is missing)")
        data = manifest.read_bytes()
        self._children[name] = {"dir": name, "size": len(data), "crc32": zlib.crc32(data)}

    def _manifest(self, kind: str, meta: Mapping) -> dict:
        manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "meta": dict(meta),
                    "files": self._arrays}
        if self._json:
            manifest["json"] = self._json
        if self._children:
            manifest["children"] = self._children
        return manifest


def check_replaceable(path) -> None:
    """A FileExistsError unless ``path`` is free or a flatcoat directory (which a save may replace)."""
    target = Path(path)
    if target.exists() and (not target.is_dir() or not (target / MANIFEST).is_file()):
        raise FileExistsError(
            f"{target} exists and is not a flatcoat directory (it has no {MANIFEST}); refusing to replace it: "
            "remove it or choose another path"
        )


def write_directory(path, kind: str, meta: Mapping, fill: Callable[[DirectoryWriter], None]) -> None:
    """Writes a flatcoat directory atomically.

    ``fill(writer)`` writes the contents through a :class:`DirectoryWriter`;
    ``meta`` (JSON-serialisable) goes into the manifest, which is written last.
    An existing directory at ``path`` is replaced only if it is a flatcoat
    directory, and only once the new one is complete on disk: a crash at any
    point leaves either the old or the new directory at ``path``.
    """
    target = Path(path)
    check_replaceable(target)
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        writer = DirectoryWriter(staging)
        fill(writer)
        with open(staging / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(writer._manifest(kind, meta), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)
        if not target.exists():
            os.rename(staging, target)
            staging = None
        elif _exchange(staging, target):
            # `staging` now holds the previous directory.
            pass
        else:
            # No atomic exchange: move the old directory aside first. A crash between
            # the two renames leaves it at `.<name>.old-*`, which load() recovers.
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(target, old)
            os.rename(staging, target)
            staging = old
        _fsync_dir(parent)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def save_index(path, kind: str, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes a directory of arrays only (an index): ``arrays`` maps names to ``<name>.npy``."""

    def fill(writer: DirectoryWriter) -> None:
        for name, array in arrays.items():
            writer.add_array(name, array)

    write_directory(path, kind, meta, fill)


# ----------------------------------------------------------------------------- reading


def _fail(path: Path, reason: str):
    raise IndexFormatError(f"{path}: {reason}")


def _complete(directory: Path) -> bool:
    """Whether every file its manifest lists is there with the listed size (child directories too)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        listed = list(manifest["files"].values()) + list(manifest.get("json", {}).values())
        if not all((directory / entry["file"]).stat().st_size == entry["size"] for entry in listed):
            return False
        return all(
            (directory / entry["dir"] / MANIFEST).stat().st_size == entry["size"] and _complete(directory / entry["dir"])
            for entry in manifest.get("children", {}).values()
        )
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return False


def _recover(target: Path) -> None:
    """If a save was interrupted between its two renames, put the old directory back.

    Only a complete old directory qualifies: a stray whose deletion was cut
    short may be newer than the one to bring back.
    """
    if target.exists():
        return
    parent = target.parent if str(target.parent) else Path(".")
    olds = sorted(parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds:
        if _complete(old):
            os.rename(old, target)
            return


def _crc32_of(path: Path, size: int) -> int:
    # One buffer no larger than the file, reused: reading never allocates more than the file justifies.
    buffer = bytearray(max(1, min(_CHUNK, size)))
    view = memoryview(buffer)
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                return crc
            crc = zlib.crc32(view[:n], crc)


def _entry(directory: Path, section: str, name: str, entry, file_name: str) -> dict:
    """Checks a manifest entry's name (an identifier: no path can leave the directory) and file name."""
    if not isinstance(name, str) or not name.isidentifier():
        _fail(directory / MANIFEST, f"{section} name {name!r} is not an identifier")
    if not isinstance(entry, dict):
        _fail(directory / MANIFEST, f"{section} entry {name!r} is not an object")
    key = "dir" if section == "children" else "file"
    if entry.get(key) != file_name:
        _fail(directory / MANIFEST, f"{section} entry {name!r} must be stored in {file_name}")
    return entry


def _checked_file(path: Path, entry: dict, verify: bool) -> int:
    """Size (always) and CRC-32 (with ``verify``) of a regular file against its manifest entry."""
    if path.is_symlink() or not path.is_file():
        _fail(path, "missing (or not a regular file)")
    size = path.stat().st_size
    expected_size = entry.get("size")
    if not isinstance(expected_size, int) or size != expected_size:
        _fail(path, f"size is {size} bytes, manifest says {expected_size}: the file is truncated or was replaced")
    if verify and _crc32_of(path, size) != entry.get("crc32"):
        _fail(path, "checksum mismatch: the file is corrupt")
    return size


def _read_array(directory: Path, name: str, entry, mmap: bool, verify: bool) -> np.ndarray:
    entry = _entry(directory, "array", name, entry, f"{name}.npy")
    path = directory / entry["file"]
    size = _checked_file(path, entry, verify)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                _fail(path, f"unsupported .npy version {version}")
            header_end = f.tell()
    except IndexFormatError:
        raise
    except Exception as exc:  # numpy raises ValueError/SyntaxError for broken headers
        _fail(path, f"unreadable .npy header ({exc})")
    if dtype.hasobject or fortran:
        _fail(path, "holds an object or Fortran-ordered array; flatcoat writes neither")
    if dtype.str != entry.get("dtype") or list(shape) != entry.get("shape"):
        _fail(path, f"holds {dtype.str}{list(shape)}, manifest says {entry.get('dtype')}{entry.get('shape')}")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        _fail(path, f"invalid shape {shape} in its header")
    if header_end + math.prod(shape) * dtype.itemsize != size:  # Python ints: no wrap-around
        _fail(path, "data size does not match its header")
    try:
        if mmap:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return np.load(path, allow_pickle=False)
    except (ValueError, OverflowError, MemoryError) as exc:
        _fail(path, f"unreadable array ({exc})")


def _read_json(directory: Path, name: str, entry, verify: bool) -> Any:
    entry = _entry(directory, "json", name, entry, f"{name}.json")
    path = directory / entry["file"]
    _checked_file(path, entry, verify)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        _fail(path, f"not valid JSON ({type(exc).__name__})")


def _check_child(directory: Path, name: str, entry, verify: bool) -> Path:
    entry = _entry(directory, "children", name, entry, name)
    path = directory / name
    if path.is_symlink() or not path.is_dir():
        _fail(path, "missing (or not a directory)")
    _checked_file(path / MANIFEST, entry, verify)
    return path


@dataclass(frozen=True)
class SavedDirectory:
    """A verified flatcoat directory: its kind, parameters, arrays, JSON documents and child paths.

    Children are verified when opened (:meth:`open_child`): their manifest's
    size (and CRC-32 with ``verify``) were checked against this manifest.
    """

    path: Path
    kind: str
    meta: dict
    arrays: Dict[str, np.ndarray]
    documents: Dict[str, Any]
    children: Dict[str, Path]

    def open_child(self, name: str, *, mmap: bool, verify: bool, device: str = "cpu"):
        """Loads child directory ``name`` (never recovered on its own: it was written inside this one)."""
        if name not in self.children:
            _fail(self.path / MANIFEST, f"lists no child directory {name!r}")
        return _open(self.children[name], mmap=mmap, verify=verify, device=device, recover=False)


def read_directory(path, mmap: bool = True, verify: bool = True, *, recover: bool = True) -> SavedDirectory:
    """Reads and verifies a flatcoat directory (not its children's contents).

    With ``mmap=True`` arrays are read-only memory maps (pages are shared
    between processes and read on demand). ``verify=True`` checks every file's
    CRC-32 by streaming it once (without mapping it); the structure and sizes
    are always checked. ``recover`` first puts back a directory left aside by
    an interrupted two-rename save.
    """
    mmap, verify = as_bool(mmap, "mmap"), as_bool(verify, "verify")
    directory = Path(path)
    if recover:
        _recover(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: not a flatcoat directory (it does not exist or is a file)")
    if manifest_path.is_symlink() or not manifest_path.is_file():
        _fail(manifest_path, "missing: this is not a flatcoat directory")
    if manifest_path.stat().st_size > _MAX_MANIFEST_BYTES:
        _fail(manifest_path, "larger than any manifest flatcoat writes")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        _fail(manifest_path, f"not valid JSON ({type(exc).__name__})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        _fail(manifest_path, "not a flatcoat manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        _fail(manifest_path, f"invalid format version {version!r}")
    if version > FORMAT_VERSION:
        _fail(manifest_path, f"format version {version} is newer than this flatcoat reads ({FORMAT_VERSION}); upgrade flatcoat")
    kind, meta, files = manifest.get("kind"), manifest.get("meta"), manifest.get("files")
    documents, children = manifest.get("json", {}), manifest.get("children", {})
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(files, dict):
        _fail(manifest_path, "missing kind, meta or files")
    if not isinstance(documents, dict) or not isinstance(children, dict):
        _fail(manifest_path, "json and children must be objects")
    return SavedDirectory(
        path=directory,
        kind=kind,
        meta=meta,
        arrays={name: _read_array(directory, name, entry, mmap, verify) for name, entry in files.items()},
        documents={name: _read_json(directory, name, entry, verify) for name, entry in documents.items()},
        children={name: _check_child(directory, name, entry, verify) for name, entry in children.items()},
    )


def _open(path, *, mmap, verify, device, recover: bool):
    saved = read_directory(path, mmap=mmap, verify=verify, recover=recover)
    kind, manifest = saved.kind, saved.path / MANIFEST
    if kind not in _OPENERS and kind not in _LOADERS and kind in _LAZY_KINDS:
        importlib.import_module(_LAZY_KINDS[kind])
    opener = _OPENERS.get(kind)
    if opener is not None:
        return opener(saved, mmap=mmap, verify=verify, device=device)
    loader = _LOADERS.get(kind)
    if loader is None:
        raise IndexFormatError(f"{manifest}: unknown index kind {kind!r}")
    try:
        index = loader(saved.meta, saved.arrays)
    except IndexFormatError as exc:
        # The index's own checks name a file of the directory ("ids.npy: ..."): say which directory.
        if str(exc).startswith(str(saved.path)):
            raise
        raise IndexFormatError(f"{saved.path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{manifest}: inconsistent {kind} index ({exc})") from exc
    if device != "cpu":
        index.to(device)
    return index


def load(path, mmap: bool = True, verify: bool = True, device: str = "cpu"):
    """Opens anything flatcoat saved with ``.save(path)``: any index, or a :class:`flatcoat.Retriever`.

    ``mmap=True`` maps the arrays read-only and searches them without copying;
    the first change (``add``/``remove``) copies them into memory. ``verify``
    checks every file's checksum first (one sequential read). ``device="cuda"``
    uploads the index (a Retriever's indexes) to the GPU straight after loading.
    """
    return _open(path, mmap=mmap, verify=verify, device=device, recover=True)
