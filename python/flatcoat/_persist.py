"""Index persistence: a directory with ``manifest.json`` and ``.npy`` arrays.

Writes are atomic (temporary directory beside the target, fsync, then an atomic
exchange with the old directory where the OS offers one); reads verify the
manifest, each file's size and CRC-32, and each array's header before any data
is mapped or read, so a corrupt file gives :class:`IndexFormatError`, never a
crash or an allocation sized by an unverified field.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Callable, Dict, Mapping, Tuple

import numpy as np

FORMAT_NAME = "flatcoat"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 22

_LOADERS: Dict[str, Callable[[dict, Dict[str, np.ndarray]], object]] = {}


class IndexFormatError(ValueError):
    """An index directory that cannot be read: missing, corrupt, or of an unknown version."""


def register_kind(kind: str, loader: Callable[[dict, Dict[str, np.ndarray]], object]) -> None:
    """Registers ``loader(meta, arrays) -> index`` for manifests of this ``kind``."""
    _LOADERS[kind] = loader


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


def save_index(path, kind: str, meta: Mapping, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes an index directory atomically.

    ``meta`` must be JSON-serialisable; ``arrays`` maps names to arrays saved as
    ``<name>.npy``. An existing directory at ``path`` is replaced only if it is a
    flatcoat index, and only once the new one is complete on disk: a crash at
    any point leaves either the old or the new index at ``path``.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir() or not (target / MANIFEST).is_file():
            raise FileExistsError(
                f"{target} exists and is not a flatcoat index; refusing to overwrite it "
                "(remove it or choose another path)"
            )
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        files = {}
        for name, array in arrays.items():
            if not name.isidentifier():
                raise ValueError(f"array name {name!r} must be an identifier")
            files[name] = _write_array(staging / f"{name}.npy", np.asarray(array))
        manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "meta": dict(meta), "files": files}
        with open(staging / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)
        if not target.exists():
            os.rename(staging, target)
            staging = None
        elif _exchange(staging, target):
            # `staging` now holds the previous index.
            pass
        else:
            # No atomic exchange: move the old index aside first. A crash between
            # the two renames leaves it at `.<name>.old-*`, which load() recovers.
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(target, old)
            os.rename(staging, target)
            staging = old
        _fsync_dir(parent)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------- reading


def _fail(path: Path, reason: str):
    raise IndexFormatError(f"{path}: {reason}")


def _complete(directory: Path) -> bool:
    """Whether every file its manifest lists is there with the listed size."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        return all(
            (directory / entry["file"]).stat().st_size == entry["size"] for entry in manifest["files"].values()
        )
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return False


def _recover(target: Path) -> None:
    """If a save was interrupted between its two renames, put the old index back.

    Only a complete old index qualifies: a stray whose deletion was cut short
    may be newer than the one to bring back.
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


def _read_array(directory: Path, name: str, entry, mmap: bool, verify: bool) -> np.ndarray:
    if not name.isidentifier():  # the same rule as save_index: no path can leave the directory
        _fail(directory / MANIFEST, f"array name {name!r} is not an identifier")
    if not isinstance(entry, dict):
        _fail(directory / MANIFEST, f"entry for array {name!r} is not an object")
    file_name = entry.get("file")
    if not isinstance(file_name, str) or file_name != f"{name}.npy":
        _fail(directory / MANIFEST, f"array {name!r} must be stored in {name}.npy")
    path = directory / file_name
    if path.is_symlink() or not path.is_file():
        _fail(path, "missing (or not a regular file)")
    size = path.stat().st_size
    expected_size = entry.get("size")
    if not isinstance(expected_size, int) or size != expected_size:
        _fail(path, f"size is {size} bytes, manifest says {expected_size}: the file is truncated or was replaced")
    if verify and _crc32_of(path, size) != entry.get("crc32"):
        _fail(path, "checksum mismatch: the file is corrupt")
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


def load_index(path, mmap: bool = True, verify: bool = True) -> Tuple[str, dict, Dict[str, np.ndarray]]:
    """Reads and verifies an index directory; returns ``(kind, meta, arrays)``.

    With ``mmap=True`` arrays are read-only memory maps (pages are shared
    between processes and read on demand). ``verify=True`` checks every file's
    CRC-32 by streaming it once (without mapping it); the structure is always
    checked.
    """
    directory = Path(path)
    _recover(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: not an index directory (it does not exist or is a file)")
    if manifest_path.is_symlink() or not manifest_path.is_file():
        _fail(manifest_path, "missing: this is not a flatcoat index")
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
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(files, dict):
        _fail(manifest_path, "missing kind, meta or files")
    arrays = {name: _read_array(directory, name, entry, mmap, verify) for name, entry in files.items()}
    return kind, meta, arrays


def load(path, mmap: bool = True, verify: bool = True, device: str = "cpu"):
    """Loads any flatcoat index saved with ``.save(path)``.

    ``mmap=True`` maps the arrays read-only and searches them without copying;
    the first change (``add``/``remove``) copies them into memory. ``verify``
    checks every file's checksum first (one sequential read). ``device="cuda"``
    uploads a dense index to the GPU straight after loading.
    """
    kind, meta, arrays = load_index(path, mmap=mmap, verify=verify)
    loader = _LOADERS.get(kind)
    if loader is None:
        raise IndexFormatError(f"{Path(path) / MANIFEST}: unknown index kind {kind!r}")
    try:
        index = loader(meta, arrays)
    except IndexFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{Path(path) / MANIFEST}: inconsistent {kind} index ({exc})") from exc
    if device != "cpu":
        index.to(device)
    return index
