"""k-means and assignment in the core (flatcoat._core.kmeans / assign): against
a float64 numpy Lloyd run from the same initial centroids, deterministic in the
seed whatever the thread count, sampling, empty clusters, bad input."""

import numpy as np
import pytest

from flatcoat import _core
from conftest import clustered


def _blobs(n, dim, n_clusters, seed=0, spread=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)) * 3
    return (centres[rng.integers(0, n_clusters, n)] + rng.standard_normal((n, dim)) * spread).astype(np.float32)


def _lloyd(x, init, iterations, spherical):
    """float64 Lloyd iterations; spherical: max inner product, unit centroids."""
    x = x.astype(np.float64)
    c = init.astype(np.float64)
    for _ in range(iterations):
        labels = _labels(x, c, spherical)
        for j in range(len(c)):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(0)
                if spherical:
                    c[j] /= np.linalg.norm(c[j])
    return c


def _labels(x, c, spherical):
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    if spherical:
        return np.argmax(x @ c.T, axis=1)
    return np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)


def _objective(x, c, spherical):
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    if spherical:
        return float((x @ c.T).max(1).sum())  # larger is better
    return float(((x[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum())


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("dim", [3, 17, 64])
def test_objective_matches_numpy_lloyd_from_the_same_init(spherical, dim):
    """iterations=0 returns the initial centroids; 10 iterations reach numpy's objective within 1 %."""
    x = clustered(2000, dim, n_clusters=12, spread=0.8, seed=dim) if spherical else _blobs(2000, dim, 12, seed=dim)
    init = _core.kmeans(x, 12, iterations=0, seed=5, spherical=spherical)
    # The initial centroids are distinct data points (normalised when spherical).
    rows = {tuple(r) for r in x}
    assert all(tuple(r) in rows for r in init) or spherical
    assert len({tuple(r) for r in init}) == 12
    ours = _core.kmeans(x, 12, iterations=10, seed=5, spherical=spherical)
    ref = _lloyd(x, init, 10, spherical)
    a, b = _objective(x, ours, spherical), _objective(x, ref, spherical)
    assert abs(a - b) <= 0.01 * abs(b), (a, b)
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    # Better than the initialisation.
    assert (a > _objective(x, init, spherical)) if spherical else (a < _objective(x, init, spherical))


def test_deterministic_in_the_seed_for_any_thread_count(restore_threads):
    x = _blobs(5000, 24, 20, seed=1)
    _core.set_num_threads(1)
    one = _core.kmeans(x, 20, seed=3)
    one_sampled = _core.kmeans(x, 20, seed=3, max_points_per_centroid=40)
    _core.set_num_threads(2)
    two = _core.kmeans(x, 20, seed=3)
    two_sampled = _core.kmeans(x, 20, seed=3, max_points_per_centroid=40)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one_sampled, two_sampled)
    assert not np.array_equal(one, _core.kmeans(x, 20, seed=4))
    assert not np.array_equal(one, one_sampled)  # the sample (20 x 40 of 5000 points) changes the result


def test_sampling_caps_the_training_set():
    """With max_points_per_centroid=p only k*p points are clustered: the init comes from them and the
    result is still a good clustering of the whole set."""
    x = _blobs(20000, 16, 8, seed=2)
    c = _core.kmeans(x, 8, seed=0, max_points_per_centroid=50)
    full = _core.kmeans(x, 8, seed=0, max_points_per_centroid=0)
    assert _objective(x, c, False) <= 1.05 * _objective(x, full, False)


def test_n_equal_k_gives_the_points_themselves():
    x = _blobs(7, 5, 3, seed=3)
    c = _core.kmeans(x, 7, seed=1)
    assert sorted(map(tuple, c)) == sorted(map(tuple, x))


def test_empty_clusters_are_split_from_large_ones():
    """60 copies of one point plus 40 points close around it: the initial centroids repeat that
    point, so several clusters start empty (ties go to the smaller index); splitting re-seeds them
    from the large cluster and every cluster ends up with points."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros((60, 4)), rng.standard_normal((40, 4)) * 0.1]).astype(np.float32) + 1.0
    k = 8
    init = _core.kmeans(x, k, iterations=0, seed=0)
    assert len({tuple(r) for r in init}) < k  # the set-up does start with duplicates
    c = _core.kmeans(x, k, iterations=20, seed=0)
    assert np.isfinite(c).all()
    labels = _core.assign(x, c, "l2")
    assert len(np.unique(labels)) == k


def test_assign_matches_numpy_and_breaks_ties_by_the_smaller_index():
    x = _blobs(500, 33, 10, seed=4)
    c = _core.kmeans(x, 10, seed=0)
    np.testing.assert_array_equal(_core.assign(x, c, "l2"), _labels(x, c, False))
    np.testing.assert_array_equal(_core.assign(x, c, "ip"), np.argmax(x.astype(np.float64) @ c.T.astype(np.float64), 1))
    twins = np.concatenate([c[:3], c[:3]])  # every centroid twice: the first copy wins
    assert set(_core.assign(x, twins, "ip")) <= {0, 1, 2}
    assert set(_core.assign(x, twins, "l2")) <= {0, 1, 2}
    small = np.ascontiguousarray(x[:, :3])  # the few-dimension path
    cs = _core.kmeans(small, 6, seed=0)
    np.testing.assert_array_equal(_core.assign(small, cs, "l2"), _labels(small, cs, False))


def test_every_isa_assigns_like_numpy(restore_isa):
    """The panel kernel of each compiled ISA, with a centroid count that leaves a partial panel and a
    point count that leaves a partial query block."""
    x = _blobs(333, 40, 9, seed=6)
    c = _core.kmeans(x, 37, seed=0)
    ref_l2 = _labels(x, c, False)
    ref_ip = np.argmax(x.astype(np.float64) @ c.T.astype(np.float64), 1)
    for isa in [i for i in _core.compiled_isas() if _core.cpu_supports(i)]:
        _core.set_active_isa(isa)
        np.testing.assert_array_equal(_core.assign(x, c, "l2"), ref_l2, err_msg=isa)
        np.testing.assert_array_equal(_core.assign(x, c, "ip"), ref_ip, err_msg=isa)


def test_bad_input():
    x = _blobs(10, 4, 2)
    with pytest.raises(ValueError, match="at least k"):
        _core.kmeans(x, 11)
    with pytest.raises(ValueError, match="k"):
        _core.kmeans(x, 0)
    with pytest.raises(TypeError, match="float32"):
        _core.kmeans(x.astype(np.float64), 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.kmeans(np.asfortranarray(_blobs(10, 4, 2)), 2)
    with pytest.raises(TypeError, match="numpy array"):
        _core.kmeans(x.tolist(), 2)
    with pytest.raises(ValueError, match="iterations"):
        _core.kmeans(x, 2, iterations=-1)
    with pytest.raises(ValueError, match="columns"):
        _core.assign(x, np.zeros((2, 5), np.float32), "l2")
    with pytest.raises(ValueError, match="metric|cosine"):
        _core.assign(x, np.zeros((2, 4), np.float32), "cosine")
