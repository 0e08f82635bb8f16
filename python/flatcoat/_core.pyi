"""Type stub of the native module flatcoat._core (see cpp/bindings/).

The bindings check buffers and never copy or cast: arrays must have the dtype,
the number of dimensions and the C-contiguity given here (TypeError for a wrong
dtype, ValueError otherwise). Every `storage` is one of "f32", "f16", "int8",
"binary" (MaxSim: not "binary"), every kernel `metric` "ip" or "l2" (cosine is
"ip" over normalised vectors); an unknown name is a ValueError naming the
argument. Searches return `(q, k')` with `k' = min(k, rows)`.

Every search takes `filter=` by keyword: None, or a 1-d C-contiguous uint64
array of exactly ceil(n / 64) words over the index's storage positions (n:
rows, total slots or documents); position p is allowed iff bit p % 64 of word
p // 64 is set (`np.packbits(mask, bitorder="little")` padded to 8 bytes, viewed
as '<u8'). Bits past n are ignored. Anything else is a TypeError (not an array,
wrong dtype) or ValueError (rank, contiguity, length) starting with "filter:"
and giving the expected length. Missing results are id -1 with score -inf
(+inf for l2).
"""

from typing import Iterator, List, Optional, Tuple

import numpy as np

__version__: str
cuda_compiled: bool

# ----------------------------------------------------------------------------- ISA and threads

def compiled_isas() -> List[str]:
    """ISAs whose kernels this build has, least to most capable."""
def detected_isa() -> str:
    """The best compiled ISA this CPU runs."""
def active_isa() -> str:
    """The ISA searches use (FLATCOAT_ISA, else detected)."""
def set_active_isa(name: str) -> None:
    """ValueError if `name` is unknown, not compiled in or not supported by this CPU."""
def cpu_supports(name: str) -> bool: ...
def cpu_features() -> List[Tuple[str, str, bool]]:
    """(isa, feature, present) for each CPU feature a level adds to the one below, level by level."""
def num_threads() -> int: ...
def set_num_threads(n: int) -> None:
    """0 restores the default (all cores); flatcoat.set_num_threads checks the range."""
def hardware_threads() -> int: ...

# ----------------------------------------------------------------------------- dense

def search_dense(
    storage: str,
    metric: str,
    dim: int,
    codes: np.ndarray,  # (rows, dim) float32 | uint16 (f16 bits) | uint8 (int8) ; (rows, ceil(dim/64)) uint64 (binary)
    ids: np.ndarray,  # (rows,) int64
    sq_norms: Optional[np.ndarray],  # (rows,) float32, l2 only
    scale: Optional[np.ndarray],  # (rows,) float32, int8 only
    offset: Optional[np.ndarray],  # (rows,) float32, int8 only
    float_rows: Optional[np.ndarray],  # (rows, dim) float32, for rerank
    float_sq_norms: Optional[np.ndarray],  # (rows,) float32, for l2 rerank
    queries: np.ndarray,  # (q, dim) float32, normalised for cosine
    k: int,
    rerank: int = 0,
    *,
    filter: Optional[np.ndarray] = None,  # (ceil(rows / 64),) uint64 bits over the rows
) -> Tuple[np.ndarray, np.ndarray]:
    """(scores float32 (q, k'), ids int64 (q, k')); rerank=R >= k re-ranks the R best against float_rows.
    A filter gives exactly the search of an index holding only the allowed rows (ids and scores)."""
def binarize(x: np.ndarray) -> np.ndarray:
    """Sign bits of (n, dim) float32 rows: (n, ceil(dim / 64)) uint64, bit j set when x[j] > 0."""
def quantize_queries(queries: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The int8 scan's query codes: (codes int8 (q, dim), scales float32 (q,)), q ~ scale * code."""
def int8_dots(query_codes: np.ndarray, codes: np.ndarray, *, emulate_tiles: bool = False) -> np.ndarray:
    """Exact int32 (q, n) dot products of int8 query codes (q, dim) with uint8 row codes (n, dim), active ISA;
    emulate_tiles: the sapphirerapids tile kernel on emulated tiles (needs a CPU with genoa's features)."""
def bf16_dots(queries: np.ndarray, rows: np.ndarray, *, emulate_tiles: bool = False) -> np.ndarray:
    """float32 (q, n) dot products of bfloat16 queries (q, dim) and rows (n, dim), given as uint16 bits,
    with the active ISA's bf16 scan kernels; emulate_tiles as for int8_dots."""
def encode_dense(
    storage: str,
    x: np.ndarray,  # (n, dim) float32
    codes: np.ndarray,  # (n, ...) in the layout of _storage.dense_code_layout, written
    *,
    scale: Optional[np.ndarray] = None,  # (n,) float32, int8 only (required there)
    offset: Optional[np.ndarray] = None,  # (n,) float32, int8 only (required there)
    sq_norms: Optional[np.ndarray] = None,  # (n,) float32, of the decoded rows (not binary)
    float_rows: Optional[np.ndarray] = None,  # (n, dim) float32 copy (normalised with normalize)
    float_sq_norms: Optional[np.ndarray] = None,  # (n,) float32
    normalize: bool = False,  # L2-normalise each row first (cosine)
) -> None:
    """Encodes x into the given arrays in the core's threads, as encode_into in flatcoat/dense.py
    documents. A ValueError names the first row with NaN or inf, else an all-zero row under
    normalize, else an f16 row beyond the float16 range."""
def advise_hugepages(array: np.ndarray) -> bool:
    """madvise(MADV_HUGEPAGE) over the array's whole pages; True if advised."""

class IdMap:
    """Hash map from int64 ids to row positions."""

    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def clear(self) -> None: ...
    def reserve(self, n: int) -> None: ...
    def insert_new(self, ids: np.ndarray, first_position: int) -> int:
        """ids (n,) int64 -> first_position + i, all or nothing; the index of the first duplicate, or -1."""
    def find(self, ids: np.ndarray) -> np.ndarray:
        """Positions (n,) int64 of ids (n,) int64; -1 where absent."""
    def assign(self, ids: np.ndarray, positions: np.ndarray) -> None: ...
    def erase(self, ids: np.ndarray) -> None: ...

# ----------------------------------------------------------------------------- MaxSim

def search_maxsim(
    storage: str,
    dim: int,
    tokens: np.ndarray,  # (n_tokens, dim) float32 | uint16 (f16 bits) | uint8 (int8, code + 128)
    offsets: np.ndarray,  # (docs + 1,) int64, 0 then strictly increasing, last = n_tokens
    token_scales: Optional[np.ndarray],  # (n_tokens,) float32, int8 only
    ids: np.ndarray,  # (docs,) int64
    queries: np.ndarray,  # (query tokens, dim) float32
    query_offsets: np.ndarray,  # (q + 1,) int64
    weights: Optional[np.ndarray],  # (query tokens,) float32
    k: int,
    subset: Optional[np.ndarray] = None,  # document positions (not ids), int64
    subset_offsets: Optional[np.ndarray] = None,  # (q + 1,) int64, splits subset per query
    *,
    filter: Optional[np.ndarray] = None,  # (ceil(docs / 64),) uint64 bits over document positions
) -> Tuple[np.ndarray, np.ndarray]:
    """(scores float32 (q, k'), ids int64 (q, k')), k' = min(k, docs); subset rows padded with -1 / -inf.
    filter ANDs with subset; masked documents are never scored."""
def maxsim_scores(
    storage: str,
    dim: int,
    tokens: np.ndarray,
    offsets: np.ndarray,
    token_scales: Optional[np.ndarray],
    queries: np.ndarray,
    query_offsets: np.ndarray,
    weights: Optional[np.ndarray],
    *,
    emulate_tiles: bool = False,
) -> np.ndarray:
    """Every MaxSim score, float32 (q, docs); emulate_tiles: int8 through the sapphirerapids tile kernel on
    emulated tiles (needs a CPU with genoa's features)."""

# ----------------------------------------------------------------------------- ceilings and top-k

class ProbeResult:
    seconds: float  # wall time
    work: float
    rate: float  # work per second: arithmetic probes sum each thread's best self-timed slice; read bandwidth is its best 64 MiB slice
    def __iter__(self) -> Iterator[float]:
        """Unpacks as (seconds, work)."""

def probe_read_bandwidth(x: np.ndarray, threads: int) -> ProbeResult:
    """Reads x (n,) float32 once on `threads` threads; work is bytes."""
def probe_fma(rounds: int, threads: int) -> ProbeResult:
    """float32 FMA chains of the active ISA; work is flops (an FMA counts 2)."""
def probe_int8(rounds: int, threads: int) -> ProbeResult:
    """u8 x s8 -> i32 dot products with the active ISA's instruction (vpdpbusd on icelake,
    vpmaddubsw + vpmaddwd below), as the int8 MaxSim kernel issues them; work is integer ops."""
def probe_popcount(rounds: int, threads: int) -> ProbeResult:
    """Hamming distances of L1-resident words with the active ISA's popcount (vpopcntq on
    icelake, popcnt below), as the binary kernel runs it; work is 64-bit words."""
def probe_bf16(rounds: int, threads: int) -> ProbeResult:
    """bfloat16 pair-product loop (vdpbf16ps): (seconds, flops); ValueError on a level without AVX512_BF16."""
def topk(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of (rows, n) float32: (values float32 (rows, k'), indices int64 (rows, k')),
    k' = min(k, n), largest first, ties by smaller index."""

# ----------------------------------------------------------------------------- IVF: k-means, 4-bit PQ, search
# (The bindings also accept these optional arguments by keyword; callers should name them.)

def kmeans(
    x: np.ndarray,  # (n, d) float32, n >= k
    k: int,
    iterations: int = 10,
    seed: int = 0,
    spherical: bool = False,  # ip/cosine: max inner product assignment, unit centroids
    max_points_per_centroid: int = 256,  # sample of at most k * this many points (0: all)
    two_level_above: int = 0,  # k above this: iterations assign through a two-level quantizer (0: never)
) -> np.ndarray:
    """(k, d) float32 centroids; deterministic in seed for any thread count; empty clusters split."""
def assign(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """(n,) int64 nearest centroid ("ip": max inner product, "l2": min squared distance; ties: smaller index)."""
def centroid_groups(centroids: np.ndarray, n_groups: int = 0, seed: int = 0,
                    metric: str = "l2") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-level quantizer over (k, d) float32 centroids: (coarse (g, d) float32, offsets (g + 1,) int64,
    members (k,) int64); n_groups 0: 2^ceil(log2(sqrt(k)))."""
def assign_two_level(x: np.ndarray, centroids: np.ndarray, coarse: np.ndarray, offsets: np.ndarray,
                     members: np.ndarray, metric: str) -> np.ndarray:
    """(n,) int64: each row's best centroid within its best group (ties: smaller index)."""
def pq_train(x: np.ndarray, m: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """(m, 16, d // m) float32 codebooks of (n, d) float32 rows, n >= 16, m dividing d."""
def pq_encode(
    x: np.ndarray,  # (n, d) float32 residuals
    codebooks: np.ndarray,  # (m, 16, d // m) float32
    originals: Optional[np.ndarray] = None,  # (n, d) float32: the direction of the anisotropic loss
    eta: "float | np.ndarray" = 0.0,  # parallel-error weight, one float or (n,) float32; 0: plain
) -> np.ndarray:
    """(n, m) uint8 codes 0..15: nearest codeword, or anisotropic coordinate descent from it."""
def pq4_pack(codes: np.ndarray) -> np.ndarray:
    """(n, m) uint8 codes 0..15 -> (ceil(n / 32), 16 * m) uint8 fast-scan blocks (see flatcoat/pq.hpp)."""
def pq4_unpack(packed: np.ndarray, n: int) -> np.ndarray:
    """(blocks, 16 * m) uint8 fast-scan blocks -> the first n vectors' (n, m) uint8 codes."""
def search_ivf(
    storage: str,  # "pq4" | "f32" | "f16" | "int8" | "binary"
    metric: str,  # "ip" | "l2"
    dim: int,
    centroids: np.ndarray,  # (nlist, dim) float32
    list_offsets: np.ndarray,  # (nlist + 1,) int64, slots; pq4 lists are multiples of 32
    codes: np.ndarray,  # pq4: (total_slots / 32, 16 * m) uint8; else dense rows (total_slots, ...)
    slot_ids: np.ndarray,  # (total_slots,) int64, -1 for padding and removed entries
    codebooks: Optional[np.ndarray],  # (m, 16, dim // m) float32, pq4 only
    scale: Optional[np.ndarray],  # (total_slots,) float32, int8 only
    offset: Optional[np.ndarray],  # (total_slots,) float32, int8 only
    sq_norms: Optional[np.ndarray],  # (total_slots,) float32, l2 over f32/f16/int8 lists
    float_rows: Optional[np.ndarray],  # (n_rows, dim) float32 copy, for rerank (may be a memory map)
    slot_rows: Optional[np.ndarray],  # (total_slots,) int64 row of each slot in float_rows (-1: padding)
    float_sq_norms: Optional[np.ndarray],  # (n_rows,) float32, for l2 rerank
    queries: np.ndarray,  # (q, dim) float32, normalised for cosine
    k: int,
    nprobe: int,  # >= 1, clamped to nlist
    rerank: int,  # 0: approximate scores; R >= k: exact re-ranking of the R best from float_rows
    *,
    filter: Optional[np.ndarray] = None,  # (ceil(total_slots / 64),) uint64 bits over the slots
) -> Tuple[np.ndarray, np.ndarray]:
    """(scores float32 (q, k'), ids int64 (q, k')), k' = min(k, live slots); -1/-inf(+inf for l2) padding.
    With a filter each query probes lists in centroid order until it has seen nprobe lists' worth of
    allowed entries (and at least rerank or k), or scores the allowed slots directly when cheaper
    (exactly, from float_rows, when given); never fewer than min(k, allowed) results."""

# ----------------------------------------------------------------------------- PLAID (flatcoat/plaid.hpp)

def search_plaid(
    nbits: int,  # 1 | 2 | 4
    centroids: np.ndarray,  # (ncentroids, dim) float32
    weights: np.ndarray,  # (dim, 2 ** nbits) float32 bucket values
    codes: np.ndarray,  # (n_tokens, ceil(dim * nbits / 8)) uint8 packed residual codes
    centroid_ids: np.ndarray,  # (n_tokens,) int32
    offsets: np.ndarray,  # (docs + 1,) int64
    ids: np.ndarray,  # (docs,) int64
    ivf_offsets: np.ndarray,  # (ncentroids + 1,) int64
    ivf_docs: np.ndarray,  # (entries,) int32 document positions, ascending per centroid
    queries: np.ndarray,  # (query tokens, dim) float32
    query_offsets: np.ndarray,  # (q + 1,) int64
    query_weights: Optional[np.ndarray],  # (query tokens,) float32
    k: int,  # >= 1, the caller clamps it to docs
    nprobe: int,
    ncandidates: int,  # >= ndocs
    ndocs: int,  # >= k
    *,
    centroid_threshold: Optional[float] = None,  # PLAID's centroid pruning in stage 2
    filter: Optional[np.ndarray] = None,  # (ceil(docs / 64),) uint64 bits over document positions
    stats: bool = False,  # a third item: per-stage seconds and sizes
    normalize: bool = False,  # decompressed tokens rescaled to unit norm
) -> tuple:
    """(scores float32 (q, k), ids int64 (q, k)[, stats dict]); -1/-inf padding."""
def plaid_build_ivf(centroid_ids: np.ndarray, offsets: np.ndarray, n_centroids: int) -> Tuple[np.ndarray, np.ndarray]:
    """(ivf_offsets int64 (n_centroids + 1,), ivf_docs int32) of int32 or uint16 centroid ids: each centroid's
    distinct documents, ascending."""
def plaid_encode(nbits: int, x: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
                 cutoffs: np.ndarray) -> np.ndarray:
    """(n, ceil(dim * nbits / 8)) uint8 packed codes of the residuals x - centroids[labels] against the
    per-dimension cutoffs (dim, 2^nbits - 1)."""
def plaid_decompress(nbits: int, codes: np.ndarray, centroid_ids: np.ndarray, centroids: np.ndarray,
                     weights: np.ndarray, *, normalize: bool = False) -> np.ndarray:
    """(n, dim) float32 tokens: centroids[id] + weights[d, code_d], each rescaled to unit norm with
    normalize=True."""
