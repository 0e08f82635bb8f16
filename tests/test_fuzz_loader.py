"""Fuzzing the loader: every mutated index either loads into an index that
searches, or raises IndexFormatError; never another exception, never a crash,
and never an allocation larger than the files justify.

The seeds are the small saved indexes in ``tests/fuzz_seeds/`` (regenerate with
``tests/fuzz_seeds/make_seeds.py``): DenseIndex in every storage and
MultiVectorIndex in every storage, plus empty ones. hypothesis draws one to
four mutations per case and applies them in order:

* truncating any file at any offset; flipping bits anywhere (the manifest, the
  ``.npy`` headers, the data);
* replacing a manifest field (format, version, kind, meta values, each array's
  file/dtype/shape/size/crc32) by an absurd value, or deleting it;
* forging an array consistently (the manifest's dtype, shape, size and CRC
  updated to match, so the checksums pass and the index's own checks are
  reached): wrong dtypes, wrong shapes, absurd values (negative or repeated
  ids, decreasing offsets, NaN scales);
* forging a ``.npy`` header (shapes with huge or negative dimensions, odd
  dtypes, Fortran order, unknown versions), again with the manifest updated;
* replacing the manifest by non-JSON bytes, JSON that is not an object, or
  oversized text;
* replacing a file by a symlink (out of the directory, to /dev/zero, to
  itself), a FIFO or a directory; deleting files; adding extra files.

Besides the general property, some mutations have an exact answer, checked
too: a truncated or deleted file, a symlinked file and (with ``verify=True``) a
single flipped bit in an array are always rejected; an extra file the manifest
does not name is ignored.

``FLATCOAT_FUZZ_EXAMPLES`` sets the examples per single-family test (default
50; the mixed test draws three times as many; docs/reliability.md gives the
figures of a long run). ``FLATCOAT_FUZZ_REPORT=path``
appends the number of cases tried and their outcomes to ``path``.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import flatcoat

SEED_DIR = Path(__file__).resolve().parent / "fuzz_seeds"
SEEDS = {
    p.name: {f.name: f.read_bytes() for f in sorted(p.iterdir())}
    for p in sorted(SEED_DIR.iterdir())
    if (p / "manifest.json").is_file()
}
EXAMPLES = int(os.environ.get("FLATCOAT_FUZZ_EXAMPLES", "50"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
OUTCOMES = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    total = sum(OUTCOMES.values())
    line = f"test_fuzz_loader: {total} cases, " + ", ".join(f"{k}={v}" for k, v in sorted(OUTCOMES.items()))
    print("\n" + line)
    if os.environ.get("FLATCOAT_FUZZ_REPORT"):
        with open(os.environ["FLATCOAT_FUZZ_REPORT"], "a") as f:
            f.write(line + "\n")


def test_seed_corpus_is_complete():
    kinds = {json.loads(files["manifest.json"])["kind"] for files in SEEDS.values()}
    assert kinds == {"dense", "multivector"}
    storages = {(json.loads(f["manifest.json"])["kind"], json.loads(f["manifest.json"])["meta"]["storage"]) for f in SEEDS.values()}
    assert storages >= {("dense", s) for s in ("f32", "f16", "int8", "binary")} | {("multivector", s) for s in ("f32", "f16", "int8")}
    for name in SEEDS:
        flatcoat.load(SEED_DIR / name, mmap=False, verify=True)


# ----------------------------------------------------------------------------- cases


class Case:
    """An index directory held in memory: file name -> bytes, or a special entry."""

    def __init__(self, seed: str):
        self.seed = seed
        self.files = dict(SEEDS[seed])  # name -> bytes | ("symlink", target) | ("fifo",) | ("dir",)
        self.outside = {}  # files written beside the directory (symlink targets)
        self.exact = None  # "reject" / "accept": the answer some mutations fix
        self.log = []

    def manifest(self):
        """The manifest as JSON, or None when an earlier mutation removed or broke it."""
        raw = self.files.get("manifest.json")
        if not isinstance(raw, bytes):
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return None

    def set_manifest(self, m):
        self.files["manifest.json"] = json.dumps(m, indent=1).encode()

    def array_names(self):
        return [n for n, v in self.files.items() if n.endswith(".npy") and isinstance(v, bytes)]

    def materialize(self, root: Path) -> Path:
        for name, data in self.outside.items():
            (root / name).write_bytes(data)
        path = root / "idx"
        path.mkdir()
        for name, value in self.files.items():
            target = path / name
            if isinstance(value, bytes):
                target.write_bytes(value)
            elif value[0] == "symlink":
                target.symlink_to(value[1])
            elif value[0] == "fifo":
                os.mkfifo(target)
            elif value[0] == "dir":
                target.mkdir()
        return path


def _update_entry(case: Case, npy_name: str, data: bytes, dtype: str, shape) -> None:
    """Replaces an array file and makes the manifest agree with it (size, CRC, dtype, shape)."""
    case.files[npy_name] = data
    try:
        m = case.manifest()
        entry = m["files"][npy_name[:-4]]
        entry.update(size=len(data), crc32=zlib.crc32(data), dtype=dtype, shape=list(shape))
        case.set_manifest(m)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # an earlier mutation broke the manifest; the file change stands alone


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


ABSURD = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 3, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63), -(10**30)]),
    st.sampled_from([1.5, float("nan"), float("inf"), -float("inf"), -0.0, 1e308]),
    st.sampled_from(["", "f32", "int8", "binary", "multivector", "dense", "l2", "../x", "/etc/passwd", "<f8", "|O", "<U8", "\x00", "é"]),
    st.sampled_from([None, True, False, [], {}, [2**40, 7], [-1], [0, 0, 0], [1.5], ["a"], {"a": 1}]),
    st.integers(),
    st.lists(st.integers(-(2**64), 2**64), max_size=4),
)

DTYPES = ["<i8", "<i4", "<f4", "<f8", "|u1", "<u2", "<u8", ">i8", ">f4", "|b1", "<c8", "|i1", "<f2"]


@st.composite
def truncate(draw, case: Case):
    names = sorted(n for n, v in case.files.items() if isinstance(v, bytes))
    name = draw(st.sampled_from(names))
    data = case.files[name]
    if not data:
        return
    cut = draw(st.integers(0, len(data) - 1))
    case.files[name] = data[:cut]
    case.log.append(f"truncate {name} at {cut}/{len(data)}")
    return "reject"


@st.composite
def flip_bits(draw, case: Case):
    names = sorted(n for n, v in case.files.items() if isinstance(v, bytes) and v)
    name = draw(st.sampled_from(names))
    data = bytearray(case.files[name])
    n_flips = draw(st.integers(1, 8))
    flipped = set()
    for _ in range(n_flips):
        # Half the flips land in the first 128 bytes: the .npy header or the manifest's head.
        pos = draw(st.one_of(st.integers(0, min(len(data), 128) - 1), st.integers(0, len(data) - 1)))
        bit = draw(st.integers(0, 7))
        data[pos] ^= 1 << bit
        flipped ^= {(pos, bit)}
    case.files[name] = bytes(data)
    case.log.append(f"flip {sorted(flipped)} in {name}")
    # A single flipped bit in an array changes its CRC-32: verify=True must catch it.
    return "reject-verified" if name.endswith(".npy") and len(flipped) == 1 else None


@st.composite
def manifest_field(draw, case: Case):
    m = case.manifest()
    if not isinstance(m, dict):
        return
    paths = [("format",), ("version",), ("kind",), ("meta",), ("files",)]
    if isinstance(m.get("meta"), dict):
        paths += [("meta", k) for k in sorted(m["meta"])] + [("meta", "extra_key")]
    if isinstance(m.get("files"), dict):
        for name in sorted(m["files"]):
            paths.append(("files", name))
            if isinstance(m["files"][name], dict):
                paths += [("files", name, k) for k in ("file", "dtype", "shape", "size", "crc32")]
    path = draw(st.sampled_from(paths))
    delete = draw(st.booleans()) if len(path) > 1 else False
    value = draw(ABSURD)
    node = m
    for key in path[:-1]:
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    try:
        case.set_manifest(m)
    except ValueError:  # a float that JSON cannot hold without allow_nan
        case.files["manifest.json"] = json.dumps(m, allow_nan=True).encode()
    case.log.append(f"manifest {'/'.join(path)} {'deleted' if delete else '= ' + repr(value)[:60]}")


def _draw_array_name(draw, case: Case):
    """One of the case's array files, or None when it has none left."""
    names = case.array_names()
    return draw(st.sampled_from(sorted(names))) if names else None


@st.composite
def forge_array(draw, case: Case):
    name = _draw_array_name(draw, case)
    if name is None:
        return
    try:
        original = np.load(io.BytesIO(case.files[name]), allow_pickle=False)
    except Exception:
        original = np.zeros(3, dtype=np.int64)
    dtype = draw(st.sampled_from([original.dtype.str] * 3 + DTYPES))
    shape = list(original.shape)
    how = draw(st.sampled_from(["same", "rows+1", "rows-1", "cols", "0-d", "3-d"]))
    if how == "rows+1" and shape:
        shape[0] += 1
    elif how == "rows-1" and shape and shape[0]:
        shape[0] -= 1
    elif how == "cols" and len(shape) > 1:
        shape[1] = draw(st.integers(0, 9))
    elif how == "0-d":
        shape = []
    elif how == "3-d":
        shape = shape[:1] + [2, 2]
    shape = tuple(shape)
    if int(np.prod(shape)) > 4096:
        return
    values = draw(st.sampled_from(["random", "perturb", "constant"]))
    np_dtype = np.dtype(dtype)
    if values == "random" or original.size == 0 or np_dtype.kind == "c":
        array = draw(hnp.arrays(np_dtype, shape))
    elif values == "perturb":
        # The original values with a few entries replaced: negative or repeated ids,
        # offsets out of order or out of range, NaN or zero scales.
        with np.errstate(all="ignore"):
            array = np.resize(original.astype(np_dtype), shape)
        flat = array.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            if flat.size:
                i = draw(st.integers(0, flat.size - 1))
                j = draw(st.integers(0, flat.size - 1))
                choice = draw(st.sampled_from(["copy", "neg", "big", "zero", "nan"]))
                with np.errstate(all="ignore"):
                    if choice == "copy":
                        flat[i] = flat[j]
                    elif choice == "neg" and np_dtype.kind in "if":
                        flat[i] = -1
                    elif choice == "big":
                        flat[i] = np.iinfo(np_dtype).max if np_dtype.kind in "iu" else (np.finfo(np_dtype).max if np_dtype.kind == "f" else 1)
                    elif choice == "nan" and np_dtype.kind == "f":
                        flat[i] = np.nan
                    else:
                        flat[i] = 0
    else:
        array = np.full(shape, draw(st.sampled_from([0, 1, -1, 127])), dtype=np.int64)
        with np.errstate(all="ignore"):
            array = array.astype(np_dtype)
    data = _npy_bytes(array)
    _update_entry(case, name, data, array.dtype.str, array.shape)
    case.log.append(f"forge {name} as {array.dtype.str}{list(array.shape)} ({values})")


def _fits(shape) -> bool:
    """numpy refuses (ValueError) a shape whose non-zero dimensions overflow int64 bytes; see the known gaps."""
    return math.prod(d for d in shape if d) * 16 < 2**63


SHAPES = st.one_of(
    st.lists(st.integers(0, 20), max_size=3),
    st.lists(st.sampled_from([1, 7, 2**20, 2**31, 2**32, 2**40, 2**58]), min_size=1, max_size=3),
    st.lists(st.integers(0, 2**33), min_size=1, max_size=2).map(lambda s: [0] + s),
).filter(_fits)


def forge_header_with(shapes):
    @st.composite
    def forge_header(draw, case: Case):
        name = _draw_array_name(draw, case)
        if name is None:
            return
        data = case.files[name]
        if len(data) < 10 or data[:6] != b"\x93NUMPY":
            return
        header_len = int.from_bytes(data[8:10], "little")
        body = data[10 + header_len :]
        descr = draw(st.sampled_from(["<i8", "<f4", "|u1", "<u2", "<u8", "|O", "<U4", "|V8", ">i8", "[('a', '<i4')]", "'<i8'"]))
        shape = tuple(draw(shapes))
        fortran = draw(st.sampled_from([False, False, True]))
        keep_body = draw(st.booleans())
        descr_text = descr if descr.startswith(("[", "'")) else repr(descr)
        header = "{'descr': %s, 'fortran_order': %s, 'shape': %r, }" % (descr_text, fortran, shape)
        header = header.ljust(((len(header) + 11) // 64 + 1) * 64 - 11) + "\n"
        version = draw(st.sampled_from([b"\x01\x00", b"\x01\x00", b"\x03\x00", b"\x09\x09"]))
        new = b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header.encode("latin1") + (body if keep_body else b"")
        dtype_str = descr.strip("'") if not descr.startswith("[") else "|V4"
        _update_entry(case, name, new, dtype_str, shape)
        case.log.append(f"header {name}: {header.strip()} v{version!r} body={keep_body}")

    return forge_header


@st.composite
def manifest_text(draw, case: Case):
    text = draw(st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        st.sampled_from([b"", b"null", b"[]", b"[1, 2]", b"3", b'"flatcoat"', b"true", b"{", b"\xef\xbb\xbf{}", b"\xff\xfe{}",
                         b'{"format": "flatcoat", "version": 1, "kind": "dense", "meta": [], "files": {}}',
                         b'{"format": "flatcoat", "version": 1, "kind": "dense", "meta": {}, "files": {}}',
                         b'{"format": "flatcoat", "version": 1, "kind": "multivector", "meta": {}, "files": []}',
                         b'{"format": "flatcoat", "format": "other"}', b"NaN", b'{"version": 1e999}']),
        st.integers(1, 3).map(lambda mb: b" " * (mb << 20) + b"{}"),
    ))
    case.files["manifest.json"] = text
    case.log.append(f"manifest text {text[:40]!r}... ({len(text)} bytes)")


@st.composite
def replace_file(draw, case: Case):
    names = sorted(case.files)
    name = draw(st.sampled_from(names))
    what = draw(st.sampled_from(["outside", "dev_zero", "dev_null", "self", "dangling", "dir", "fifo", "sibling", "parent"]))
    if what == "outside":
        value = case.files[name] if isinstance(case.files[name], bytes) else b""
        case.outside["outside_" + name] = value
        case.files[name] = ("symlink", "../outside_" + name)
    elif what == "dev_zero":
        case.files[name] = ("symlink", "/dev/zero")
    elif what == "dev_null":
        case.files[name] = ("symlink", "/dev/null")
    elif what == "self":
        case.files[name] = ("symlink", name)
    elif what == "dangling":
        case.files[name] = ("symlink", "no_such_file")
    elif what == "sibling":
        other = draw(st.sampled_from(names))
        if other == name:
            return
        case.files[name] = ("symlink", other)
    elif what == "parent":
        case.files[name] = ("symlink", "..")
    else:
        case.files[name] = (what,)
    case.log.append(f"replace {name} by {what}")
    return "reject"


@st.composite
def delete_file(draw, case: Case):
    name = draw(st.sampled_from(sorted(case.files)))
    del case.files[name]
    case.log.append(f"delete {name}")
    return "reject"


@st.composite
def extra_file(draw, case: Case):
    name = draw(st.sampled_from(["extra.npy", "notes.txt", "codes.npy.bak", ".hidden", "manifest.json~"]))
    if name in case.files:
        return
    case.files[name] = draw(st.binary(max_size=32))
    case.log.append(f"extra {name}")
    return "same"


MUTATIONS = {
    "truncate": truncate, "flip": flip_bits, "field": manifest_field, "forge": forge_array,
    "header": forge_header_with(SHAPES), "text": manifest_text, "replace": replace_file,
    "delete": delete_file, "extra": extra_file,
}


# ----------------------------------------------------------------------------- the property


def _file_bytes(path: Path) -> int:
    total = 0
    for p in path.iterdir():
        st_ = os.lstat(p)
        if stat.S_ISREG(st_.st_mode):
            total += st_.st_size
    return total


def _queries(index, rng):
    if isinstance(index, flatcoat.MultiVectorIndex):
        return [rng.standard_normal((t, index.dim)).astype(np.float32) for t in (1, 3)]
    return rng.standard_normal((2, index.dim)).astype(np.float32)


def check_loaded(index) -> None:
    """A loaded index must search without error and return only ids it holds."""
    assert isinstance(index, (flatcoat.DenseIndex, flatcoat.MultiVectorIndex))
    rng = np.random.default_rng(0)
    q = _queries(index, rng)
    held = set(index.ids.tolist()) | {-1}
    assert len(held) == len(index) + 1
    k = 4
    scores, ids = index.search(q, k=k)
    assert ids.shape == scores.shape == (2, min(k, len(index)))  # never more columns than entries
    assert set(ids.ravel().tolist()) <= held
    for row in ids:
        found = [i for i in row.tolist() if i != -1]
        assert len(found) == len(set(found)) <= min(k, len(index))
    if isinstance(index, flatcoat.DenseIndex) and index.keep_float:
        scores, ids = index.search(q, k=k, rerank=max(k, len(index)))
        assert set(ids.ravel().tolist()) <= held


def attempt(path: Path, mmap: bool, verify: bool):
    """Loads `path`; returns the index, or None for an IndexFormatError. Any other exception fails."""
    try:
        return flatcoat.load(path, mmap=mmap, verify=verify)
    except flatcoat.IndexFormatError:
        return None


def peak_load_bytes(path: Path, verify: bool):
    """Peak traced allocation during load(mmap=False): (peak, index or None)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        index = attempt(path, mmap=False, verify=verify)
        return tracemalloc.get_traced_memory()[1], index
    finally:
        tracemalloc.stop()


def run_case(case: Case, mmap: bool, verify: bool, family: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="flatcoat-fuzz-"))
    try:
        path = case.materialize(root)
        budget = 2 * _file_bytes(path) + (1 << 20)
        index = attempt(path, mmap=mmap, verify=verify)
        if index is not None:
            check_loaded(index)
            del index
        peak, again = peak_load_bytes(path, verify=False)
        assert peak <= budget, f"load allocated {peak} bytes for {budget - (1 << 20)} / 2 bytes of files"
        if again is not None:
            check_loaded(again)
        outcome = "loaded" if again is not None or index is not None else "rejected"
        # Mutations with an exact answer.
        if case.exact == "reject" or (case.exact == "reject-verified" and verify):
            assert outcome == "rejected", case.log
            with pytest.raises(flatcoat.IndexFormatError):
                flatcoat.load(path, mmap=not mmap, verify=verify)
        if case.exact == "same":
            reference = flatcoat.load(SEED_DIR / case.seed, mmap=False)
            loaded = flatcoat.load(path, mmap=mmap, verify=verify)
            np.testing.assert_array_equal(loaded.ids, reference.ids)
            q = _queries(reference, np.random.default_rng(1))
            for a, b in zip(loaded.search(q, k=3), reference.search(q, k=3)):
                np.testing.assert_array_equal(a, b)
        OUTCOMES[f"{family}:{outcome}"] += 1
    except BaseException:
        print("case:", case.seed, case.log, "mmap" if mmap else "read", "verify" if verify else "no-verify")
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _mutate(data, case: Case, families, max_mutations=4):
    n = data.draw(st.integers(1, max_mutations), label="n_mutations")
    exact = []
    for _ in range(n):
        family = data.draw(st.sampled_from(families), label="family")
        exact.append(data.draw(MUTATIONS[family](case)))
    # An exact answer holds only for a single mutation.
    case.exact = exact[0] if n == 1 else None
    return families[0] if len(families) == 1 else "mixed"


SEED_NAMES = st.sampled_from(sorted(SEEDS))
MODES = st.tuples(st.booleans(), st.booleans())


@settings(FUZZ, max_examples=3 * EXAMPLES)
@given(data=st.data(), seed=SEED_NAMES, modes=MODES)
def test_any_mutation_loads_or_raises_index_format_error(data, seed, modes):
    case = Case(seed)
    family = _mutate(data, case, sorted(MUTATIONS))
    run_case(case, *modes, family=family)


@pytest.mark.parametrize("family", sorted(MUTATIONS))
@FUZZ
@given(data=st.data(), seed=SEED_NAMES, modes=MODES)
def test_single_mutation(family, data, seed, modes):
    case = Case(seed)
    _mutate(data, case, [family], max_mutations=1)
    run_case(case, *modes, family=family)


# ----------------------------------------------------------------------------- known gaps, one test each
#
# Each was found by the tests above; they are kept out of the drawn mutations
# (so that the fuzz tests keep checking everything else) and pinned here.


def _seed_copy(tmp_path: Path, seed: str) -> Path:
    path = tmp_path / "idx"
    shutil.copytree(SEED_DIR / seed, path)
    return path


def _forge_header_shape(path: Path, name: str, shape, keep_body: bool):
    data = (path / f"{name}.npy").read_bytes()
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + header_len].decode("latin1")
    forged = re.sub(r"'shape': \([^)]*\)", f"'shape': {tuple(shape)!r}", header).rstrip().ljust(header_len - 1) + "\n"
    new = data[:10] + forged.encode("latin1") + (data[10 + header_len :] if keep_body else b"")
    (path / f"{name}.npy").write_bytes(new)
    m = json.loads((path / "manifest.json").read_text())
    m["files"][name].update(size=len(new), crc32=zlib.crc32(new), shape=list(shape))
    (path / "manifest.json").write_text(json.dumps(m))


def test_deeply_nested_manifest(tmp_path):
    path = _seed_copy(tmp_path, "dense_f32_ip")
    (path / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(flatcoat.IndexFormatError):
        flatcoat.load(path)


def test_manifest_cannot_name_a_file_outside_the_directory(tmp_path):
    path = _seed_copy(tmp_path, "dense_f32_ip")
    outside = tmp_path / "secret.npy"
    np.save(outside, np.arange(3))
    data = outside.read_bytes()
    m = json.loads((path / "manifest.json").read_text())
    m["files"]["../secret"] = {"file": "../secret.npy", "dtype": "<i8", "shape": [3], "size": len(data), "crc32": zlib.crc32(data)}
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(flatcoat.IndexFormatError):
        flatcoat.load(path)


@pytest.mark.parametrize("mmap", [True, False])
def test_negative_dimensions_in_a_header(tmp_path, mmap):
    path = _seed_copy(tmp_path, "dense_f32_ip")
    _forge_header_shape(path, "ids", (-1, -11), keep_body=True)  # 11 elements, as many as the real (11,)
    with pytest.raises(flatcoat.IndexFormatError):
        flatcoat.load(path, mmap=mmap)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("shape", [(2**32, 2**32), (0, 2**33, 2**33), (2**62, 4)])
def test_header_dimensions_overflowing_int64(tmp_path, mmap, shape):
    path = _seed_copy(tmp_path, "dense_f32_ip")
    _forge_header_shape(path, "ids", shape, keep_body=False)  # no data: the wrapped product is 0
    with pytest.raises(flatcoat.IndexFormatError):
        flatcoat.load(path, mmap=mmap)


def test_verified_load_allocates_no_more_than_the_files(tmp_path):
    path = _seed_copy(tmp_path, "dense_int8_l2")
    peak, index = peak_load_bytes(path, verify=True)
    assert index is not None
    assert peak <= 2 * _file_bytes(path) + (1 << 20), peak
