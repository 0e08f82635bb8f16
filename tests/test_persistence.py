"""Save/load round trips, mmap sharing, atomic replacement and every corruption case."""

import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

import flatcoat
from flatcoat import _persist
from conftest import clustered

STORAGES = ["f32", "f16", "int8", "binary"]


def build(storage, metric="l2", keep_float=True, n=500, dim=37, seed=0):
    index = flatcoat.DenseIndex(dim, metric=metric, storage=storage, keep_float=keep_float)
    x = clustered(n, dim, n_clusters=10, seed=seed)
    index.add(x, ids=np.arange(n) * 3 + 5)
    return index, x


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path, storage, metric, mmap):
    index, x = build(storage, metric)
    index.remove([5, 8])
    path = tmp_path / "idx"
    index.save(path)
    loaded = flatcoat.load(path, mmap=mmap)
    assert isinstance(loaded, flatcoat.DenseIndex)
    for attr in ["dim", "metric", "storage", "keep_float"]:
        assert getattr(loaded, attr) == getattr(index, attr)
    assert len(loaded) == len(index)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    for rerank in [None, 20]:
        a = index.search(x[:9], k=7, rerank=rerank)
        b = loaded.search(x[:9], k=7, rerank=rerank)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    codes = loaded._rows.view("codes")
    assert isinstance(codes.base, np.memmap) == mmap or isinstance(codes, np.memmap) == mmap
    # Changing a loaded index copies it; the files are untouched.
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    new_ids = loaded.add(x[:3])
    loaded.remove([11])
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert new_ids.tolist() == [index.ids.max() + 1 + i for i in range(3)]
    assert flatcoat.load(path, mmap=mmap).ids.tolist() == index.ids.tolist()


def test_int8_ranges_survive(tmp_path):
    index, x = build("int8", "ip", keep_float=False)
    index.save(tmp_path / "a")
    loaded = flatcoat.load(tmp_path / "a")
    for name in ("codes", "scale", "offset"):
        np.testing.assert_array_equal(loaded._rows.view(name), index._rows.view(name))
    more = clustered(50, 37, n_clusters=10, seed=9)
    index.add(more)
    loaded.add(more)
    for name in ("codes", "scale", "offset"):
        np.testing.assert_array_equal(loaded._rows.view(name), index._rows.view(name))


def test_empty_index_round_trip(tmp_path):
    for storage in STORAGES:
        index = flatcoat.DenseIndex(5, storage=storage)
        index.save(tmp_path / storage)
        loaded = flatcoat.load(tmp_path / storage)
        assert len(loaded) == 0 and loaded.storage == storage
        loaded.add(np.ones((2, 5), dtype=np.float32))
        assert len(loaded) == 2


def test_save_replaces_an_existing_index(tmp_path):
    path = tmp_path / "idx"
    a, _ = build("f32", seed=1)
    b, _ = build("f16", seed=2, n=100)
    a.save(path)
    b.save(path)
    loaded = flatcoat.load(path)
    assert loaded.storage == "f16" and len(loaded) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary directories left


def test_save_refuses_to_overwrite_something_else(tmp_path):
    index, _ = build("f32")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a flatcoat directory"):
        index.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_failed_save_keeps_the_previous_index(tmp_path, monkeypatch):
    path = tmp_path / "idx"
    old, x = build("f32", n=50)
    old.save(path)
    new, _ = build("int8", n=80)
    calls = {"n": 0}
    real = _persist._write_array

    def failing(p, array):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(p, array)

    monkeypatch.setattr(_persist, "_write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    loaded = flatcoat.load(path)
    assert loaded.storage == "f32" and len(loaded) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_interrupted_rename_is_recovered(tmp_path):
    # Without an atomic exchange, save moves the old index aside before renaming
    # the new one in; a crash in between leaves only `.idx.old-*`.
    path = tmp_path / "idx"
    index, _ = build("f32", n=20)
    index.save(path)
    os.rename(path, tmp_path / ".idx.old-123")
    assert len(flatcoat.load(path)) == 20
    assert path.is_dir()


def test_two_processes_share_the_mapped_pages(tmp_path):
    index, x = build("f32", n=2000, dim=64)
    index.save(tmp_path / "idx")
    script = (
        "import sys, numpy as np, flatcoat\n"
        "idx = flatcoat.load(sys.argv[1], mmap=True)\n"
        "q = np.load(sys.argv[2])\n"
        "print(idx.search(q, k=3)[1].tolist())\n"
    )
    np.save(tmp_path / "q.npy", x[:4])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    outputs = [
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "idx"), str(tmp_path / "q.npy")],
                       capture_output=True, text=True, env=env, check=True).stdout
        for _ in range(2)
    ]
    assert outputs[0] == outputs[1] == str(index.search(x[:4], k=3)[1].tolist()) + "\n"


# ----------------------------------------------------------------------------- corruption


@pytest.fixture
def saved(tmp_path):
    index, _ = build("int8", "l2", keep_float=True, n=300)
    path = tmp_path / "idx"
    index.save(path)
    return path


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path, m):
    (path / "manifest.json").write_text(json.dumps(m))


def expect_error(path, match, mmap=True):
    with pytest.raises(flatcoat.IndexFormatError, match=match):
        flatcoat.load(path, mmap=mmap)


def test_format_error_is_a_value_error():
    assert issubclass(flatcoat.IndexFormatError, ValueError)


def test_missing_directory_and_manifest(tmp_path, saved):
    expect_error(tmp_path / "nope", "not a flatcoat directory")
    (saved / "manifest.json").unlink()
    expect_error(saved, "manifest.json: missing")


def test_manifest_not_json(saved):
    (saved / "manifest.json").write_text("{not json")
    expect_error(saved, "not valid JSON")


def test_manifest_of_another_format(saved):
    write_manifest(saved, {"format": "faiss", "version": 1})
    expect_error(saved, "not a flatcoat manifest")


def test_newer_version(saved):
    m = manifest(saved)
    m["version"] = _persist.FORMAT_VERSION + 1
    write_manifest(saved, m)
    expect_error(saved, "newer than this flatcoat reads")


def test_unknown_kind(saved):
    m = manifest(saved)
    m["kind"] = "hnsw"
    write_manifest(saved, m)
    expect_error(saved, "unknown index kind 'hnsw'")


@pytest.mark.parametrize("name", ["codes", "ids", "sq_norms", "float_rows", "scale"])
def test_missing_file(saved, name):
    (saved / f"{name}.npy").unlink()
    expect_error(saved, f"{name}.npy: missing")


@pytest.mark.parametrize("name", ["codes", "ids", "float_rows"])
def test_truncated_file(saved, name):
    path = saved / f"{name}.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    expect_error(saved, f"{name}.npy: size is")


@pytest.mark.parametrize("mmap", [True, False])
def test_flipped_bit_fails_the_checksum(saved, mmap):
    path = saved / "codes.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    expect_error(saved, "codes.npy: checksum mismatch", mmap=mmap)


def test_symlinked_file_is_refused(saved, tmp_path):
    outside = tmp_path / "outside.npy"
    shutil.copy(saved / "ids.npy", outside)
    (saved / "ids.npy").unlink()
    (saved / "ids.npy").symlink_to(outside)
    expect_error(saved, "ids.npy: missing \\(or not a regular file\\)")


def resave(path, arrays_update=None, meta_update=None):
    """Writes a self-consistent (checksummed) index with altered contents."""
    saved = _persist.read_directory(path, mmap=False)
    arrays = {k: np.array(v) for k, v in saved.arrays.items()}
    arrays.update(arrays_update or {})
    saved.meta.update(meta_update or {})
    shutil.rmtree(path)
    _persist.save_index(path, saved.kind, saved.meta, arrays)


def test_count_disagrees_with_arrays(saved):
    resave(saved, meta_update={"count": 10**12})
    expect_error(saved, "expected")


def test_absurd_dim(saved):
    resave(saved, meta_update={"dim": 2**40})
    expect_error(saved, "expected|int8 storage takes at most")


def test_wrong_dtype(saved):
    arrays = _persist.read_directory(saved, mmap=False).arrays
    resave(saved, arrays_update={"ids": arrays["ids"].astype(np.int32)})
    expect_error(saved, "ids.npy: expected <i8")


def test_duplicate_ids_in_file(saved):
    ids = np.array(_persist.read_directory(saved, mmap=False).arrays["ids"])
    ids[5] = ids[6]
    resave(saved, arrays_update={"ids": ids})
    expect_error(saved, "appears twice")


def test_missing_meta_field(saved):
    m = manifest(saved)
    del m["meta"]["metric"]
    write_manifest(saved, m)
    expect_error(saved, "inconsistent dense index")


def test_manifest_lies_about_shape(saved):
    m = manifest(saved)
    m["files"]["codes"]["shape"] = [10**9, 37]
    write_manifest(saved, m)
    expect_error(saved, "codes.npy: holds")


def test_header_inconsistent_with_size(saved):
    # A header claiming more rows than the file holds, with the manifest's
    # size and checksum updated to match: caught before any data is read.
    path = saved / "ids.npy"
    data = path.read_bytes()
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + header_len].decode("latin1")
    forged = header.replace("(300,)", "(3000,)").ljust(header_len - 1) + "\n"
    new = data[:10] + forged.encode("latin1") + data[10 + header_len :]
    path.write_bytes(new)
    m = manifest(saved)
    m["files"]["ids"].update(size=len(new), crc32=zlib.crc32(new), shape=[3000])
    write_manifest(saved, m)
    expect_error(saved, "ids.npy: data size does not match its header")


def test_booleans_are_booleans(saved):
    for bad in ("no", 0, None):
        with pytest.raises(TypeError, match="^mmap: expected True or False"):
            flatcoat.load(saved, mmap=bad)
        with pytest.raises(TypeError, match="^verify: expected True or False"):
            flatcoat.load(saved, verify=bad)
    assert len(flatcoat.load(saved, mmap=np.bool_(False), verify=np.bool_(True))) == 300


def test_index_errors_name_the_directory(saved):
    ids = np.array(_persist.read_directory(saved, mmap=False).arrays["ids"])
    ids[5] = ids[6]
    resave(saved, arrays_update={"ids": ids})
    with pytest.raises(flatcoat.IndexFormatError, match=f"^{saved}: ids.npy: id .* appears twice"):
        flatcoat.load(saved)


# ----------------------------------------------------------------------------- the one writer: JSON and children


def _write_tree(path, extra=None):
    child, _ = build("f16", n=40, dim=6)

    def fill(w):
        w.add_array("weights", np.arange(5, dtype=np.float32))
        w.add_json("notes", {"text": "café ☕", "ids": [1, "two"]})
        w.add_child("inner", child.save)
        if extra:
            extra(w)

    _persist.write_directory(path, "tree", {"depth": 1}, fill)
    return child


def test_writer_holds_arrays_json_and_child_directories(tmp_path):
    path = tmp_path / "tree"
    child = _write_tree(path)
    saved = _persist.read_directory(path)
    assert saved.kind == "tree" and saved.meta == {"depth": 1}
    np.testing.assert_array_equal(saved.arrays["weights"], np.arange(5))
    assert saved.documents == {"notes": {"text": "café ☕", "ids": [1, "two"]}}
    inner = saved.open_child("inner", mmap=True, verify=True)
    np.testing.assert_array_equal(inner.ids, child.ids)
    manifest = json.loads((path / "manifest.json").read_text())
    notes = (path / "notes.json").read_bytes()
    assert manifest["json"]["notes"] == {"file": "notes.json", "size": len(notes), "crc32": zlib.crc32(notes)}
    with pytest.raises(flatcoat.IndexFormatError, match="lists no child directory 'other'"):
        saved.open_child("other", mmap=True, verify=True)
    with pytest.raises(flatcoat.IndexFormatError, match="unknown index kind 'tree'"):
        flatcoat.load(path)  # no opener registered for this kind
    # replaced as a whole, then recovered as a whole
    _write_tree(path)
    os.rename(path, tmp_path / ".tree.old-1")
    assert _persist.read_directory(path).documents["notes"]["ids"] == [1, "two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_recovery_skips_an_old_directory_with_an_incomplete_child(tmp_path):
    path = tmp_path / "tree"
    _write_tree(path)
    os.rename(path, tmp_path / ".tree.old-1")
    (tmp_path / ".tree.old-1" / "inner" / "codes.npy").unlink()  # its deletion was cut short
    with pytest.raises(flatcoat.IndexFormatError, match="not a flatcoat directory"):
        _persist.read_directory(path)


@pytest.mark.parametrize("corrupt, match", [
    (lambda p: (p / "notes.json").write_bytes(b"{}"), "notes.json: size is"),
    (lambda p: (p / "notes.json").write_bytes((p / "notes.json").read_bytes().replace(b"two", b"owt")),
     "notes.json: checksum mismatch"),
    (lambda p: shutil.rmtree(p / "inner"), "inner: missing"),
    (lambda p: (p / "inner" / "manifest.json").write_text((p / "inner" / "manifest.json").read_text() + " "),
     "inner/manifest.json: size is"),
    (lambda p: (p / "inner" / "ids.npy").unlink(), "inner/ids.npy: missing"),
])
def test_corrupt_json_or_child_is_an_index_format_error(tmp_path, corrupt, match):
    path = tmp_path / "tree"
    _write_tree(path)
    corrupt(path)
    with pytest.raises(flatcoat.IndexFormatError, match=match):
        saved = _persist.read_directory(path)
        saved.open_child("inner", mmap=False, verify=True)


def test_manifest_entries_cannot_leave_the_directory(tmp_path):
    path = tmp_path / "tree"
    _write_tree(path)
    good = json.loads((path / "manifest.json").read_text())
    for section, name, entry in [("json", "../x", {"file": "../x.json", "size": 2, "crc32": 0}),
                                 ("json", "notes", {"file": "../notes.json", "size": 2, "crc32": 0}),
                                 ("children", "inner", {"dir": "..", "size": 2, "crc32": 0}),
                                 ("children", "up", "not an object")]:
        m = json.loads(json.dumps(good))
        m[section][name] = entry
        (path / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(flatcoat.IndexFormatError, match="manifest.json"):
            _persist.read_directory(path)


def test_writer_names_are_identifiers_and_unique(tmp_path):
    for extra in (lambda w: w.add_json("weights", 1), lambda w: w.add_array("../up", np.zeros(1)),
                  lambda w: w.add_child("bad", lambda p: p.mkdir())):
        with pytest.raises(ValueError, match="identifier|used twice|not saved as a flatcoat directory"):
            _write_tree(tmp_path / "tree", extra)
        assert not list(tmp_path.iterdir())  # nothing left behind
