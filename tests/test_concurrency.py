"""Concurrency: searches from several threads while another thread adds and removes.

The writer cycles through states whose answers are known in advance: it adds
a batch of far-away vectors (never in any top-k), removes a subset S_j of the
searched vectors (including the queries' nearest neighbours), adds S_j back
with the same ids (so the storage order changes: removal moves the last rows
into the holes), and removes the far-away batch. Every state is therefore
"all searched vectors" or "all minus some S_j", and each state's answer is
computed beforehand by a separate index. A search must return, for its whole
batch, exactly (ids and scores) the answer of one state: the index before or
after a writer step, never a mixture or a half-moved array. Threads are joined
with a timeout, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import flatcoat
from conftest import clustered

READERS = 3
STEPS = int(os.environ.get("FLATCOAT_CONCURRENCY_STEPS", "150"))
JOIN_TIMEOUT = 120


def _run(index, states, subsets, far_batches, queries, search, add, remove):
    """Runs READERS searcher threads against one writer thread; returns per-state hit counts."""
    answers = list(states.values())
    errors, hits = [], np.zeros(len(answers), dtype=np.int64)
    stop = threading.Event()
    searches = [0] * READERS

    def reader(slot):
        try:
            while not stop.is_set():
                got = search(index, queries)
                for s, expected in enumerate(answers):
                    if all(np.array_equal(g, e) for g, e in zip(got, expected)):
                        hits[s] += 1
                        break
                else:
                    errors.append(AssertionError(f"a search matched no state: ids {got[1][:2].tolist()}"))
                    return
                searches[slot] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def writer():
        try:
            for step in range(STEPS):
                j = step % len(subsets)
                # A short pause after each change lets readers in: every state gets searched.
                far_ids = add(index, *far_batches[j])
                time.sleep(0.002)
                remove(index, subsets[j][0])
                time.sleep(0.002)
                add(index, *subsets[j])
                time.sleep(0.002)
                remove(index, far_ids)
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    stop.set()
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]
    assert min(searches) > 0, searches
    return hits


def _subsets(base_ids, neighbours, n_subsets, rng):
    """S_j: some of the queries' nearest neighbours plus random others."""
    out = []
    for j in range(n_subsets):
        chosen = set(neighbours[j % len(neighbours)].tolist()) | set(rng.choice(base_ids, 40, replace=False).tolist())
        out.append(np.array(sorted(chosen), dtype=np.int64))
    return out


@pytest.mark.parametrize("storage", ["f32", "int8"])
def test_dense_search_sees_a_snapshot(storage):
    n, dim, nq, k = 3000, 32, 16, 10
    x = clustered(n, dim, n_clusters=20, seed=5)
    queries = x[:nq] + 0.01
    base_ids = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)

    def make(ids):
        # int8 quantizes each vector on its own, so its codes do not depend on the state.
        index = flatcoat.DenseIndex(dim, metric="l2", storage=storage)
        index.add(x[ids], ids=ids)
        return index

    full = make(base_ids)
    neighbours = full.search(queries, k=k)[1][:, :5]
    subsets = _subsets(base_ids, neighbours, 4, rng)
    states = {"full": full.search(queries, k=k)}
    for j, s in enumerate(subsets):
        states[f"minus S{j}"] = make(np.setdiff1d(base_ids, s)).search(queries, k=k)
    # The removed subsets change every query's answer, so the states are distinguishable.
    assert all(not np.array_equal(states["full"][1], v[1]) for key, v in states.items() if key != "full")
    # Far away: about 56 from every query.
    far = [(np.full((200, dim), 10.0, dtype=np.float32) + rng.standard_normal((200, dim)).astype(np.float32),) for _ in subsets]
    subsets_rows = [(s, x[s]) for s in subsets]

    def add(index, *args):
        if len(args) == 1:  # a far batch: automatic ids after the largest so far
            return index.add(args[0])
        ids, rows = args
        return index.add(rows, ids=ids)

    hits = _run(
        make(base_ids), states, subsets_rows, far, queries,
        search=lambda index, q: index.search(q, k=k),
        add=add, remove=lambda index, ids: index.remove(ids),
    )
    # Searches ran concurrently with the writer: both kinds of states were seen.
    print("searches per state:", hits.tolist())
    assert hits[0] > 0 and hits[1:].sum() > 0, hits


def test_multivector_search_sees_a_snapshot():
    n_docs, dim, k = 600, 16, 8
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, n_docs)
    tokens = clustered(int(lengths.sum()), dim, n_clusters=15, seed=6)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    docs = [tokens[offsets[i] : offsets[i + 1]] for i in range(n_docs)]
    base_ids = np.arange(n_docs, dtype=np.int64) * 3
    queries = [docs[i][:3] + 0.01 for i in range(0, 40, 5)]

    def make(ids):
        index = flatcoat.MultiVectorIndex(dim, storage="f32")
        index.add([docs[i // 3] for i in ids], ids=ids)
        return index

    full = make(base_ids)
    neighbours = full.search(queries, k=k)[1][:, :4]
    subsets = _subsets(base_ids, neighbours, 4, rng)
    states = {"full": full.search(queries, k=k)}
    for j, s in enumerate(subsets):
        states[f"minus S{j}"] = make(np.setdiff1d(base_ids, s)).search(queries, k=k)
    assert all(not np.array_equal(states["full"][1], v[1]) for key, v in states.items() if key != "full")
    # Far-away documents: tiny token vectors, MaxSim about 0, far below every answer's scores.
    far = [([rng.standard_normal((4, dim)).astype(np.float32) * 1e-3 for _ in range(50)],) for _ in subsets]
    assert all(v[0].min() > 0.5 for v in states.values())
    subsets_docs = [(s, [docs[i // 3] for i in s]) for s in subsets]

    def add(index, *args):
        if len(args) == 1:
            return index.add(args[0])
        ids, d = args
        return index.add(d, ids=ids)

    hits = _run(
        make(base_ids), states, subsets_docs, far, queries,
        search=lambda index, q: index.search(q, k=k),
        add=add, remove=lambda index, ids: index.remove(ids),
    )
    print("searches per state:", hits.tolist())
    assert hits[0] > 0 and hits[1:].sum() > 0, hits


@pytest.mark.parametrize("make", [
    lambda: flatcoat.DenseIndex(2),
    lambda: flatcoat.MultiVectorIndex(2),
])
def test_membership_reads_the_id_map_under_the_lock(make):
    """`id in index` waits for a writer holding the lock instead of reading an id map being changed."""
    index = make()
    index.add(np.ones((1, 2), np.float32) if isinstance(index, flatcoat.DenseIndex) else [np.ones((1, 2), np.float32)])
    holding, release, result = threading.Event(), threading.Event(), []

    def writer():
        with index._lock.write():
            holding.set()
            release.wait(JOIN_TIMEOUT)

    def member():
        result.append(0 in index)

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    assert holding.wait(JOIN_TIMEOUT)
    r = threading.Thread(target=member, daemon=True)
    r.start()
    r.join(0.3)
    blocked = r.is_alive()
    release.set()
    r.join(JOIN_TIMEOUT)
    w.join(JOIN_TIMEOUT)
    assert blocked and result == [True]
