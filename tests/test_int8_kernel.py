"""The int8 scan's pieces: the query quantizer and the exact integer kernel, on every ISA."""

import numpy as np
import pytest

import flatcoat
from flatcoat import _core
from conftest import clustered

USABLE_ISAS = [isa for isa in _core.compiled_isas() if _core.cpu_supports(isa)]


def reference_codes(q):
    """float64 reference of the quantizer: scale = max|q| / 127, code = round(q / scale)."""
    q = np.asarray(q, dtype=np.float64)
    largest = np.abs(q).max(axis=1, keepdims=True)
    scale = np.where(largest > 0, largest / 127.0, 0.0)
    codes = np.where(largest > 0, np.rint(q / np.where(largest > 0, scale, 1.0)), 0.0)
    return codes, scale[:, 0]


@pytest.mark.parametrize("dim", [1, 3, 7, 97, 384])
def test_query_codes_round_to_the_nearest_step(dim):
    q = np.random.default_rng(dim).standard_normal((17, dim)).astype(np.float32)
    q[3] = 0.0  # a zero query: zero codes and scale
    codes, scales = _core.quantize_queries(q)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    ref_codes, ref_scales = reference_codes(q)
    np.testing.assert_allclose(scales, ref_scales, rtol=1e-6)
    # float32 arithmetic may round a value lying within 1e-4 of a half step the other way
    assert np.abs(codes - ref_codes).max() <= 1
    assert np.abs(codes).max() <= 127 and (np.abs(codes) == 127).any(axis=1)[np.arange(17) != 3].all()
    assert not codes[3].any() and scales[3] == 0
    # q ~ scale * code within half a step everywhere
    error = np.abs(q.astype(np.float64) - scales[:, None].astype(np.float64) * codes)
    assert (error <= 0.5 * scales[:, None] * (1 + 1e-5) + 1e-12).all()


@pytest.mark.parametrize("isa", USABLE_ISAS)
@pytest.mark.parametrize("dim", [1, 3, 7, 63, 64, 65, 97, 384, 1000])
@pytest.mark.parametrize("nq", [1, 5, 13, 40, 70])  # from 8 on: query panels where the level has them
def test_int8_kernel_is_exact_on_every_isa(isa, dim, nq, restore_isa):
    rng = np.random.default_rng(dim * 31 + nq)
    x = rng.integers(0, 256, size=(301, dim), dtype=np.uint8)  # every block shape and row tail
    q = rng.integers(-127, 128, size=(nq, dim), dtype=np.int8)
    x[0] = 255  # the extremes: 255 * -127 in every product
    q[0] = -127
    _core.set_active_isa(isa)
    got = _core.int8_dots(q, x)
    expected = q.astype(np.int64) @ x.astype(np.int64).T
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)


def test_int8_kernel_refuses_what_it_cannot_sum():
    x = np.zeros((2, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="-128"):
        _core.int8_dots(np.full((1, 4), -128, dtype=np.int8), x)
    with pytest.raises(TypeError, match="query_codes"):
        _core.int8_dots(np.zeros((1, 4), dtype=np.uint8), x)
    with pytest.raises(ValueError, match="codes: expected 4 columns"):
        _core.int8_dots(np.zeros((1, 4), dtype=np.int8), np.zeros((2, 5), dtype=np.uint8))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_int8_scores_are_the_float_query_against_the_codes(metric):
    # The scan ranks by the s8 query, then re-scores its shortlist with the
    # float query: every reported score is scale * <q, code> + offset * sum(q)
    # (l2: |q|^2 - 2 that + |decoded|^2), to float32 rounding.
    dim, k = 97, 10
    x = clustered(3000, dim, seed=11)
    q = clustered(40, dim, seed=12)
    index = flatcoat.DenseIndex(dim, metric=metric, storage="int8")
    index.add(x)
    scores, ids = index.search(q, k=k)
    arrays = index.arrays()
    codes = arrays["codes"].astype(np.float64)
    decoded = arrays["offset"][:, None].astype(np.float64) + arrays["scale"][:, None] * codes
    exact = q.astype(np.float64) @ decoded.T
    if metric == "l2":
        exact = (q.astype(np.float64) ** 2).sum(1)[:, None] - 2 * exact + (decoded ** 2).sum(1)[None, :]
    expected = np.take_along_axis(exact, ids, axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    # and they are the best k of those scores: ranks agree with the decoded reference
    order = np.argsort(-exact if metric == "ip" else exact, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(exact, order, axis=1)
    np.testing.assert_allclose(expected, best, rtol=1e-4, atol=1e-4)


def test_int8_refuses_dims_its_sums_cannot_hold():
    with pytest.raises(ValueError, match="dim: int8 storage takes at most 65536"):
        flatcoat.DenseIndex(70_000, storage="int8")
    flatcoat.DenseIndex(65_536, storage="int8")  # the largest that fits


# ----------------------------------------------------------------------------- the AMX tile kernels
# The sapphirerapids level scores batches on AMX tiles. Where the CPU has AMX,
# the forced-ISA tests above run them; everywhere the genoa level runs, the
# same kernel code runs on emulated tiles (plain code following the SDM's
# tdpbusd and tdpbf16ps), which checks its blocking (32 rows x 32 queries, then
# 16), the panel layout as B tiles, and the tails left to the vector kernels.
TILE_EMULATION = "genoa" in USABLE_ISAS
needs_tile_emulation = pytest.mark.skipif(not TILE_EMULATION, reason="the tile emulation runs on genoa's kernels")
# dims: whole 64-byte tile steps (64, 384) and not (100: the vector kernel's);
# rows and queries: one tile, two, and short of a tile on either side
TILE_SHAPES = [(dim, nq, nx) for dim in (64, 100, 384) for nq in (1, 16, 17, 40) for nx in (1, 15, 16, 33, 301)]


def bfloat16_bits(x):
    """float32 -> bfloat16 bits (uint16), nearest, ties to even: the numpy reference of to_bfloat16."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bfloat16_values(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@needs_tile_emulation
@pytest.mark.parametrize("dim,nq,nx", TILE_SHAPES)
def test_int8_tile_kernel_is_exact(dim, nq, nx):
    rng = np.random.default_rng(dim * 1000 + nq * 10 + nx)
    x = rng.integers(0, 256, size=(nx, dim), dtype=np.uint8)
    q = rng.integers(-127, 128, size=(nq, dim), dtype=np.int8)
    x[0], q[0] = 255, -127  # the extremes in every product
    got = _core.int8_dots(q, x, emulate_tiles=True)
    np.testing.assert_array_equal(got, q.astype(np.int64) @ x.astype(np.int64).T)


@needs_tile_emulation
@pytest.mark.parametrize("dim,nq,nx", TILE_SHAPES)
def test_bf16_tile_kernel_matches_float64(dim, nq, nx, restore_isa):
    rng = np.random.default_rng(dim * 1000 + nq * 10 + nx + 1)
    x = bfloat16_bits(rng.standard_normal((nx, dim)))
    q = bfloat16_bits(rng.standard_normal((nq, dim)))
    exact = bfloat16_values(q) @ bfloat16_values(x).T  # bf16 products are exact in float64
    # float32 sums of `dim` products: within dim ulps of the sum of magnitudes
    bound = 2.0 ** -24 * dim * (np.abs(bfloat16_values(q)) @ np.abs(bfloat16_values(x)).T)
    got = _core.bf16_dots(q, x, emulate_tiles=True)
    assert got.dtype == np.float32 and got.shape == (nq, nx)
    assert (np.abs(got - exact) <= bound).all()
    _core.set_active_isa("genoa")  # genoa's vdpbf16ps kernels, to the same bound
    assert (np.abs(_core.bf16_dots(q, x) - exact) <= bound).all()


@pytest.mark.parametrize("isa", USABLE_ISAS)
def test_bf16_kernels_match_float64_on_every_isa(isa, restore_isa):
    rng = np.random.default_rng(5)
    x = bfloat16_bits(rng.standard_normal((301, 384)))
    q = bfloat16_bits(rng.standard_normal((40, 384)))
    exact = bfloat16_values(q) @ bfloat16_values(x).T
    bound = 2.0 ** -24 * 384 * (np.abs(bfloat16_values(q)) @ np.abs(bfloat16_values(x)).T)
    _core.set_active_isa(isa)
    for nq in (1, 40):  # the single-query kernel, and query panels where the level has them
        assert (np.abs(_core.bf16_dots(q[:nq], x) - exact[:nq]) <= bound[:nq]).all()


@pytest.mark.skipif(TILE_EMULATION, reason="this CPU runs the tile emulation")
def test_tile_emulation_says_what_it_needs():
    with pytest.raises(ValueError, match="emulate_tiles: "):
        _core.int8_dots(np.zeros((1, 64), dtype=np.int8), np.zeros((2, 64), dtype=np.uint8), emulate_tiles=True)
