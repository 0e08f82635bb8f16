"""flatcoat.distributed.ShardedIndex on a local Ray cluster (2 CPUs): results equal one index over the same
vectors (scores, ids, ties, filters, after removes and upserts), save/load, and killed shard actors
(restart, retry, the clear errors, allow_partial). Skipped when Ray is not installed, except the test that
flatcoat.load finds the "sharded" kind without Ray.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

import flatcoat
from flatcoat import _persist

DIM = 16
LANGS = ["en", "de", "fr"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        # Loopback, no dashboard, two CPUs: what CI has. Workers inherit this interpreter.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def fd(ray_cluster):
    from flatcoat import distributed

    return distributed


def data(n, seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if n > 5:
        x[5] = x[3]  # exact ties: broken by the smaller id on every shard and in the merge
    return x


def attributes_for(ids) -> list:
    out = []
    for i in np.asarray(ids).tolist():
        a = {"year": 2000 + i % 25, "lang": LANGS[i % 3], "open": i % 2 == 0}
        if i % 4 == 0:
            a["score"] = 1 if i % 8 == 0 else 0.5  # ints and floats mix as float
        if i % 5 == 0:
            a["tags"] = ["a", "b"] if i % 10 == 0 else ["b"]
        out.append(a)
    return out


def assert_same(sharded, single, queries, **kwargs):
    a_scores, a_ids = sharded.search(queries, **kwargs)
    b_scores, b_ids = single.search(queries, **kwargs)
    assert a_ids.dtype == np.int64 and a_scores.dtype == np.float32
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_array_equal(a_scores, b_scores)


FILTERS = [
    {"year": {"$gte": 2010}},
    {"lang": {"$in": ["en", "fr"]}, "open": True},
    {"tags": "a"},
    {"score": {"$gt": 0.75}},
    {"$or": [{"year": 2003}, {"tags": {"$exists": True}}]},
    [3, 5, 8, 13, 21, 34, 10**9],
    {"$id": {"$in": [1, 2, 3, 400]}},
]


# ----------------------------------------------------------------------------- equal to one index


@pytest.mark.parametrize("metric,storage,shards", [("ip", "f32", 2), ("l2", "f32", 3), ("cosine", "int8", 2)])
def test_equals_one_index(fd, metric, storage, shards):
    x = data(600, seed=1)
    q = data(9, seed=2)
    with fd.ShardedIndex(DIM, shards=shards, metric=metric, storage=storage) as sharded:
        single = flatcoat.DenseIndex(DIM, metric=metric, storage=storage)
        ids = sharded.add(x[:400], attributes=attributes_for(range(400)))
        assert ids.tolist() == single.add(x[:400], attributes=attributes_for(range(400))).tolist()
        chosen = np.arange(1000, 1200) * 7  # explicit ids, then automatic ones continue after the largest
        sharded.add(x[400:], ids=chosen, attributes=attributes_for(chosen))
        single.add(x[400:], ids=chosen, attributes=attributes_for(chosen))
        more = sharded.add(x[:3] * 2)
        assert more.tolist() == single.add(x[:3] * 2).tolist() == [8394, 8395, 8396]
        assert len(sharded) == len(single) == 603 and sharded.schema == single.schema
        for k in (1, 10, 700):  # k beyond the size: (q, len) columns
            assert_same(sharded, single, q, k=k)
        assert_same(sharded, single, q[0], k=5)  # one (dim,) query: q = 1
        for f in FILTERS:
            assert_same(sharded, single, q, k=20, filter=f)
        # writes: removes, upserts (new vectors and attributes; a new id too)
        gone = [0, 3, 7, 8, 1000 * 7, 8396]
        assert sharded.remove(gone) == single.remove(gone) == 6
        up = np.array([1, 2, 1001 * 7, 99_999])
        sharded.upsert(x[10:14] + 1, ids=up, attributes=[{"year": 1990}, None, {"lang": "de"}, {"tags": ["z"]}])
        single.upsert(x[10:14] + 1, ids=up, attributes=[{"year": 1990}, None, {"lang": "de"}, {"tags": ["z"]}])
        assert len(sharded) == len(single)
        for f in [None] + FILTERS + [{"year": 1990}, {"tags": "z"}]:
            assert_same(sharded, single, q, k=15, filter=f)
        assert sorted(sharded.ids.tolist()) == sorted(single.ids.tolist())
        assert sorted(sharded.matches({"lang": "de"}).tolist()) == sorted(single.matches({"lang": "de"}).tolist())
        asked = [1001 * 7, 2, 5, 2]
        (va, aa), (vb, ab) = sharded.get(asked), single.get(asked)
        np.testing.assert_array_equal(va, vb)
        assert aa == ab
        assert 5 in sharded and 0 not in sharded and "5" not in sharded and 5.0 not in sharded


def test_rerank_sees_at_least_the_candidates_of_one_index(fd):
    x, q = data(800, seed=3), data(12, seed=4)
    with fd.ShardedIndex(DIM, shards=2, storage="int8", keep_float=True) as sharded:
        single = flatcoat.DenseIndex(DIM, storage="int8", keep_float=True)
        sharded.add(x)
        single.add(x)
        a_scores, _ = sharded.search(q, k=10, rerank=40)
        b_scores, _ = single.search(q, k=10, rerank=40)
        assert np.all(a_scores >= b_scores - 1e-6)  # each shard re-ranks its own 40 best
        assert_same(sharded, single, q, k=10, rerank=800)  # everything re-ranked: exact on both


def test_schema_is_the_whole_index(fd):
    with fd.ShardedIndex(DIM, shards=2) as sharded:
        single = flatcoat.DenseIndex(DIM)
        x = data(4, seed=5)
        # id 0 (shard 0) gets a float, id 1 (shard 1) an int: one float field on both shards;
        # "only" reaches shard 1 alone, yet a filter on it works on shard 0 too.
        attrs = [{"w": 0.5}, {"w": 2, "only": "x"}, {"w": 1}, None]
        sharded.add(x, attributes=attrs)
        single.add(x, attributes=attrs)
        assert sharded.schema == single.schema == {"w": "float", "only": "keyword"}
        sharded.add(data(2, seed=6), ids=[10, 12], attributes=[{"w": 3.5}, {"w": 4}])  # both on shard 0
        single.add(data(2, seed=6), ids=[10, 12], attributes=[{"w": 3.5}, {"w": 4}])
        for f in ({"only": "x"}, {"only": {"$exists": False}}, {"w": {"$gte": 1}}, {"w": 2.0}):
            assert_same(sharded, single, data(3, seed=7), k=6, filter=f)
        with pytest.raises(TypeError, match="field 'w' holds float values, got keyword"):
            sharded.add(data(1, seed=8), attributes=[{"w": "heavy"}])
        with pytest.raises(ValueError, match="unknown field 'nope'"):
            sharded.search(data(1), k=3, filter={"nope": 1})
        assert len(sharded) == 6


def test_refusals_change_nothing(fd):
    with fd.ShardedIndex(DIM, shards=2, metric="l2") as sharded:
        sharded.add(data(20), attributes=attributes_for(range(20)))
        before = sharded.search(data(3, seed=1), k=20)
        with pytest.raises(KeyError, match=r"2 id\(s\) not in the index \(20, 31\); nothing was removed"):
            sharded.remove([1, 2, 20, 31])
        with pytest.raises(ValueError, match="id 4 is already in the index"):
            sharded.add(data(3, seed=2), ids=[100, 4, 101])  # 100 and 101 would go to shard 0 and 1
        with pytest.raises(ValueError, match="id 100 is already in the index or repeated"):
            sharded.add(data(2, seed=2), ids=[100, 100])
        with pytest.raises(TypeError, match="upsert needs the ids"):
            sharded.upsert(data(1), None)
        with pytest.raises(ValueError, match="repeated in this call"):
            sharded.upsert(data(2), ids=[3, 3])
        with pytest.raises(KeyError, match=r"ids: 1 id\(s\) not in the index \(77\)"):
            sharded.get([1, 77])
        with pytest.raises(ValueError, match="expected dimension 16, got 3"):
            sharded.search(np.ones((1, 3), np.float32))
        with pytest.raises(ValueError, match="k: must be at least 1"):
            sharded.search(data(1), k=0)
        with pytest.raises(TypeError, match="k: expected an integer"):
            sharded.search(data(1), k=2.0)
        with pytest.raises(ValueError, match="nprobe: only for an ivf"):
            sharded.search(data(1), nprobe=4)
        with pytest.raises(ValueError, match="keep_float=True"):
            sharded.search(data(1), k=2, rerank=5)
        with pytest.raises(TypeError, match="allow_partial: expected True or False"):
            sharded.search(data(1), allow_partial="yes")
        after = sharded.search(data(3, seed=1), k=20)
        np.testing.assert_array_equal(before[1], after[1])
        assert len(sharded) == 20
    with pytest.raises(ValueError, match="storage"):
        fd.ShardedIndex(DIM, storage="f8")
    with pytest.raises(ValueError, match="kind"):
        fd.ShardedIndex(DIM, kind="hnsw")
    with pytest.raises(ValueError, match="shards: must be at least 1"):
        fd.ShardedIndex(DIM, shards=0)


def test_multivector_shards(fd):
    rng = np.random.default_rng(9)
    docs = [rng.standard_normal((int(rng.integers(1, 6)), 8)).astype(np.float32) for _ in range(120)]
    queries = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(4)]
    with fd.ShardedIndex(8, shards=3, kind="multivector") as sharded:
        single = flatcoat.MultiVectorIndex(8)
        attrs = [{"g": i % 3} for i in range(120)]
        sharded.add(docs, attributes=attrs)
        single.add(docs, attributes=attrs)
        for f in (None, {"g": 1}, [4, 5, 6]):
            assert_same(sharded, single, queries, k=7, filter=f)
        assert_same(sharded, single, queries[0], k=500)
        sharded.upsert(docs[:2], ids=[10, 11])
        single.upsert(docs[:2], ids=[10, 11])
        sharded.remove([0, 1, 2])
        single.remove([0, 1, 2])
        assert_same(sharded, single, queries, k=9)
        (va, aa), (vb, ab) = sharded.get([11, 4]), single.get([11, 4])
        assert aa == ab and all(np.array_equal(a, b) for a, b in zip(va, vb))


def test_ivf_shards_share_their_training(fd):
    x, q = data(3000, seed=10, dim=32), data(20, seed=11, dim=32)
    with fd.ShardedIndex(32, shards=2, kind="ivf", nlist=16) as sharded:
        single = flatcoat.IVFIndex(32, nlist=16)
        sharded.add(x)  # the first add trains every shard on all of these vectors
        single.add(x)
        for kw in ({}, {"nprobe": 3}):  # the same centroids and codebooks: the same lists, the same codes
            assert_same(sharded, single, q, k=10, **kw)


# ----------------------------------------------------------------------------- persistence


def test_save_and_load(fd, tmp_path):
    x, q = data(300, seed=12), data(6, seed=13)
    path = tmp_path / "sharded"
    with fd.ShardedIndex(DIM, shards=2, metric="cosine", storage="f16") as sharded:
        single = flatcoat.DenseIndex(DIM, metric="cosine", storage="f16")
        sharded.add(x, ids=np.arange(300) * 3, attributes=attributes_for(range(300)))
        single.add(x, ids=np.arange(300) * 3, attributes=attributes_for(range(300)))
        sharded.remove([0, 3])
        single.remove([0, 3])
        sharded.save(path)
    manifest = _persist.read_directory(path)
    assert manifest.kind == "sharded" and sorted(manifest.children) == ["shard_0", "shard_1"]
    assert manifest.meta["shards"] == 2 and manifest.meta["next_id"] == 898
    with flatcoat.load(path) as loaded:  # flatcoat.load finds the kind
        assert isinstance(loaded, fd.ShardedIndex) and len(loaded) == 298
        assert loaded.schema == single.schema and loaded.metric == "cosine" and loaded.storage == "f16"
        assert_same(loaded, single, q, k=12)
        assert_same(loaded, single, q, k=12, filter={"lang": "de"})
        assert loaded.add(x[:1]).tolist() == single.add(x[:1]).tolist() == [898]
        loaded.save(path)  # over itself, while its shards are mapped from it
    with fd.ShardedIndex.load(path, mmap=False) as again:
        assert_same(again, single, q, k=12)
    # a corrupt shard file is refused by the actor's verified load, naming it
    shard_file = next(p for p in sorted((path / "shard_1").iterdir()) if p.name.startswith("codes"))
    data_bytes = bytearray(shard_file.read_bytes())
    data_bytes[-1] ^= 0xFF
    shard_file.write_bytes(bytes(data_bytes))
    with pytest.raises(flatcoat.IndexFormatError, match="shard_1.*checksum mismatch"):
        flatcoat.load(path)


def test_load_finds_the_kind_without_importing_ray(tmp_path):
    # The lazy hook in _persist imports flatcoat.distributed, whose opener checks the manifest before
    # it would start any actor; ray itself is never imported.
    bad = tmp_path / "bad"
    _persist.write_directory(bad, "sharded", {"shards": 0}, lambda writer: None)
    code = (
        "import sys, flatcoat\n"
        "try:\n"
        f"    flatcoat.load({str(bad)!r})\n"
        "except flatcoat.IndexFormatError as exc:\n"
        "    print('refused:', exc)\n"
        "print('ray' in sys.modules, 'flatcoat.distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "invalid shard count 0" in out.stdout and out.stdout.strip().endswith("False True")


# ----------------------------------------------------------------------------- failures


def _kill(ray, actor):
    ray.kill(actor, no_restart=False)  # Ray restarts it: __init__ runs again and reloads the shard
    time.sleep(0.2)


def test_killed_shard_reloads_its_save(fd, ray_cluster, tmp_path):
    x, q = data(400, seed=14), data(5, seed=15)
    single = flatcoat.DenseIndex(DIM)
    single.add(x, attributes=attributes_for(range(400)))
    with fd.ShardedIndex(DIM, shards=2) as sharded:
        sharded.add(x, attributes=attributes_for(range(400)))
        sharded.save(tmp_path / "s")
        _kill(ray_cluster, sharded.actors[1])
        t0 = time.monotonic()
        assert_same(sharded, single, q, k=10, filter={"year": {"$lt": 2010}})  # retried until it is back
        assert time.monotonic() - t0 < 30
        _kill(ray_cluster, sharded.actors[0])
        sharded.add(x[:2], ids=[5000, 5001])  # a write waits for the restart too, then applies
        single.add(x[:2], ids=[5000, 5001])
        assert_same(sharded, single, q, k=10)
        assert all(row["alive"] and not row["stale"] for row in sharded.status())


def test_killed_shard_that_lost_writes_is_never_read_silently(fd, ray_cluster, tmp_path):
    x, q = data(300, seed=16), data(4, seed=17)
    with fd.ShardedIndex(DIM, shards=2, timeout=60) as sharded:
        sharded.add(x)
        sharded.save(tmp_path / "s")
        sharded.add(x[:4] + 3, ids=[1000, 1001, 1002, 1004])  # three on shard 0, one on shard 1
        sharded.remove([2])
        _kill(ray_cluster, sharded.actors[0])
        with pytest.raises(fd.ShardStaleError, match="shard 0 restarted and lost 2 acknowledged write") as info:
            sharded.search(q, k=10)
        assert list(info.value.shards) == [0]
        with pytest.raises(fd.ShardStaleError, match="shard 0"):
            sharded.add(x[:1], ids=[2000])  # a write to it is refused too, before any shard changes
        with pytest.warns(fd.PartialResultWarning, match=r"without shard\(s\) \[0\]"):
            result = sharded.search(q, k=10, allow_partial=True)
        scores, ids = result
        assert result.partial and list(result.missing) == [0] and ids.shape == (4, 10)
        assert np.all(ids % 2 == 1)  # shard 1's entries only
        rows = sharded.status()
        assert rows[0]["stale"] and rows[0]["expected"] - rows[0]["version"] == 2 and not rows[1]["stale"]
        assert sharded.accept_lost_writes() == {0: 2}
        # shard 0 is back at its save: 1000, 1002 gone, 2 present again; shard 1 kept 1001
        single = flatcoat.DenseIndex(DIM)
        single.add(x)
        single.add(x[1:2] + 3, ids=[1001])
        assert len(sharded) == len(single) == 301
        assert_same(sharded, single, q, k=10)
        # a kill with no write since the accept: it reloads the same save, which is what it holds
        _kill(ray_cluster, sharded.actors[0])
        assert_same(sharded, single, q, k=10)
        # a write since: lost again, and counted as one
        sharded.add(x[:1] + 5, ids=[3000])
        _kill(ray_cluster, sharded.actors[0])
        with pytest.raises(fd.ShardStaleError, match=r"shard 0 restarted and lost 1 acknowledged write\(s\)"):
            sharded.search(q, k=3)
        # a save after the accept: the next restart reloads it, and nothing is lost
        assert sharded.accept_lost_writes([0]) == {0: 1}
        sharded.add(x[:2] + 7, ids=[4000, 4002])
        single.add(x[:2] + 7, ids=[4000, 4002])
        sharded.save(tmp_path / "later")
        _kill(ray_cluster, sharded.actors[0])
        assert_same(sharded, single, q, k=10)


def test_unavailable_shard_gives_a_clear_error(fd, ray_cluster):
    x = data(20000, seed=18, dim=64)
    with fd.ShardedIndex(64, shards=2, timeout=0.3) as sharded:
        sharded.add(x)
        # Keep shard 1 busy (a long search sent to its actor directly): the index's search waits 0.3 s.
        actor = sharded.actors[1]
        busy = [actor.call.remote(sharded._expect(1), "search", {}, data(5000, seed=19, dim=64), 50) for _ in range(4)]
        with pytest.raises(fd.ShardUnavailableError, match="shard 1 did not answer within 0.3 s"):
            sharded.search(x[:2], k=5)
        with pytest.warns(fd.PartialResultWarning):
            result = sharded.search(x[:2], k=5, allow_partial=True)
        assert list(result.missing) == [1] and np.all(result.ids % 2 == 0)
        ray_cluster.get(busy)
        assert not sharded.search(x[:2], k=5).partial
        ray_cluster.kill(sharded.actors[0], no_restart=True)  # gone for good
        with pytest.raises(fd.ShardUnavailableError, match="shard 0's actor is dead"):
            sharded.search(x[:2], k=5, timeout=10)
