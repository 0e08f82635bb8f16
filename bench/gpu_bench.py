"""GPU benchmarks: flatcoat.cuda next to PyTorch on the same card, in the same run.

Run by bench/gpu_check.sh after the build and the GPU tests; writes a markdown
table (card, date, figures, ratios, targets) and the raw numbers as JSON.
Times are medians of repeated calls after warm-up, each call ending in a
device synchronisation (flatcoat's search returns when the GPU is done; the
PyTorch and CuPy peers are synchronised explicitly).

Targets: f16 Q=1 over 10M x 384 reads at >= 70% of the measured
device-to-device copy bandwidth (bytes read and written per second); Q=1024
at >= 1x PyTorch matmul + topk; top-k of 100M scores at >= 1x torch.topk.
"""

from __future__ import annotations

import argparse
import json
import sys

from gpu_common import run_info, setup, timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the Q=1 scans")
    parser.add_argument("--batch-rows", type=int, default=2_000_000, help="rows of the Q=1024 search")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--topk-n", type=int, default=100_000_000, help="scores in the top-k benchmark")
    parser.add_argument("--out", default="gpu_bench.md")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    found = setup("gpu_bench")
    if found is None:
        return 0
    cp, torch, ext = found
    import flatcoat.cuda as fc

    sync = cp.cuda.Device(0).synchronize
    tsync = torch.cuda.synchronize if torch is not None else sync
    dim, k = args.dim, 10
    results = {**run_info(cp, torch, ext), "rows": []}

    def record(name, ours, peer=None, peer_name="", target=None, unit="ms", note=""):
        row = {"name": name, "flatcoat": ours, "peer": peer, "peer_name": peer_name, "target": target,
               "unit": unit, "note": note}
        results["rows"].append(row)
        shown = f"{ours:.3f} {unit}" if ours is not None else "-"
        print(f"{name}: flatcoat {shown}" + (f", {peer_name} {peer:.3f} {unit}" if peer is not None else "") +
              (f" ({note})" if note else ""), flush=True)

    # ------------------------------------------------------------ device-to-device copy bandwidth
    nbytes = 4 << 30
    a = cp.empty(nbytes // 4, dtype=cp.float32)
    a.fill(1.0)
    b = cp.empty_like(a)
    t = timed(lambda: cp.copyto(b, a), sync)
    copy_bw = 2 * nbytes / t / 1e9  # bytes read + written
    record("d2d copy, CuPy (4 GiB; read + write)", copy_bw, unit="GB/s")
    if torch is not None:
        ta, tb = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
        t = timed(lambda: tb.copy_(ta), tsync)
        torch_bw = 2 * nbytes / t / 1e9
        record("d2d copy, PyTorch (4 GiB; read + write)", torch_bw, unit="GB/s")
        copy_bw = max(copy_bw, torch_bw)
        del ta, tb
    del a, b
    results["copy_bandwidth_gbs"] = copy_bw

    # ------------------------------------------------------------ f16 Q=1 over rows x dim
    n = args.rows
    x = cp.empty((n, dim), dtype=cp.float16)
    step = 1 << 20
    for s in range(0, n, step):  # filled in slices: no float32 copy of the whole matrix
        x[s : s + step] = cp.random.standard_normal((min(step, n - s), dim), dtype=cp.float32).astype(cp.float16)
    ids = cp.arange(n, dtype=cp.int64)
    store = fc.CudaDenseStore(dim, metric="ip", storage="f16", codes=x, ids=ids)
    q1 = cp.random.standard_normal((1, dim), dtype=cp.float32)
    t = timed(lambda: store.search(q1, k), sync, repeat=11)
    read_bw = n * dim * 2 / t / 1e9
    peer = None
    if torch is not None:
        xt = torch.as_tensor(x, device="cuda")
        qt = torch.as_tensor(q1, device="cuda").half()
        peer = timed(lambda: torch.topk(qt @ xt.T, k), tsync, repeat=11) * 1e3
    record(f"f16 Q=1 over {n:,} x {dim}, k={k}", t * 1e3, peer, "torch matmul+topk",
           note=f"{read_bw:.0f} GB/s read = {read_bw / copy_bw:.0%} of copy bandwidth (target >= 70%)")
    results["f16_q1_fraction_of_copy"] = read_bw / copy_bw

    # ------------------------------------------------------------ f16 Q=1024 over batch_rows x dim
    m = min(args.batch_rows, n)
    batch_store = fc.CudaDenseStore(dim, metric="ip", storage="f16", codes=x[:m], ids=ids[:m])
    q = cp.random.standard_normal((1024, dim), dtype=cp.float32)
    t_split = timed(lambda: batch_store.search(q, k), sync, repeat=5)
    t_half = timed(lambda: batch_store.search(q, k, half_queries=True), sync, repeat=5)
    peer = None
    if torch is not None:
        xm = xt[:m]
        qh = torch.as_tensor(q, device="cuda").half()
        peer = timed(lambda: torch.topk(qh @ xm.T, k), tsync, repeat=5) * 1e3
    flops = 2.0 * 1024 * m * dim
    record(f"f16 Q=1024 over {m:,} x {dim}, k={k} (two-term queries)", t_split * 1e3, peer,
           "torch matmul+topk (f16 queries)", target=1.0, note=f"{flops / t_split / 1e12:.0f} TFLOP/s useful")
    record(f"f16 Q=1024 over {m:,} x {dim}, k={k} (half_queries)", t_half * 1e3, peer,
           "torch matmul+topk (f16 queries)", target=1.0, note=f"{flops / t_half / 1e12:.0f} TFLOP/s useful")
    del batch_store

    # ------------------------------------------------------------ other storages, Q=1 (for the record)
    del store
    codes8 = cp.random.randint(0, 256, size=(n, dim), dtype=cp.uint8)
    # Per-vector affine codes: one scale and offset per row.
    store8 = fc.CudaDenseStore(dim, metric="ip", storage="int8", codes=codes8, ids=ids,
                               scale=cp.full(n, 0.01, cp.float32), offset=cp.zeros(n, cp.float32))
    t = timed(lambda: store8.search(q1, k), sync, repeat=11)
    record(f"int8 Q=1 over {n:,} x {dim}, k={k}", t * 1e3, note=f"{n * dim / t / 1e9:.0f} GB/s read")
    del store8, codes8
    words = (dim + 63) // 64
    bits = cp.random.randint(0, 1 << 30, size=(n, 2 * words), dtype=cp.int32).view(cp.uint64)  # any bits will do
    storeb = fc.CudaDenseStore(dim, metric="ip", storage="binary", codes=bits, ids=ids)
    t = timed(lambda: storeb.search(q1, k), sync, repeat=11)
    record(f"binary Q=1 over {n:,} x {dim}, k={k}", t * 1e3, note=f"{n * words * 8 / t / 1e9:.0f} GB/s read")
    del storeb, bits

    # ------------------------------------------------------------ top-k alone
    if torch is not None:
        del xt, xm
    del x
    scores = cp.random.standard_normal(args.topk_n, dtype=cp.float32)
    st = torch.as_tensor(scores, device="cuda") if torch is not None else None
    for kk in (10, 100, 1000, 4096):
        t = timed(lambda: fc.topk(scores, kk), sync)
        peer = timed(lambda: torch.topk(st, kk), tsync) * 1e3 if torch is not None else None
        record(f"top-k of {args.topk_n:,} float32, k={kk}", t * 1e3, peer, "torch.topk", target=1.0,
               note=f"{args.topk_n * 4 / t / 1e9:.0f} GB/s read")

    write(results, args)
    return 0


def write(results, args):
    lines = [
        "# flatcoat GPU benchmarks",
        "",
        f"- card: {results['card']}",
        f"- date: {results['date']}",
        f"- driver {results['driver']}, CUDA runtime {results['cuda_runtime']}; flatcoat {results['flatcoat']}, "
        f"CuPy {results['cupy']}, PyTorch {results['torch']}, Python {results['python']}",
        f"- command: `{results['command']}`",
        f"- measured device-to-device copy bandwidth: {results['copy_bandwidth_gbs']:.0f} GB/s (read + write)",
        "",
        "| benchmark | flatcoat | peer | peer time | speed-up vs peer | target | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        ours = f"{r['flatcoat']:.3f} {r['unit']}"
        if r["peer"] is not None and r["unit"] == "ms":
            ratio = r["peer"] / r["flatcoat"]
            peer_time, speedup = f"{r['peer']:.3f} ms", f"{ratio:.2f}x"
            met = "" if r["target"] is None else (" (met)" if ratio >= r["target"] else " (NOT met)")
        else:
            peer_time, speedup, met = "-", "-", ""
        target = "" if r["target"] is None else f">= {r['target']:g}x{met}"
        lines.append(f"| {r['name']} | {ours} | {r['peer_name'] or '-'} | {peer_time} | {speedup} | {target} | {r['note']} |")
    fraction = results.get("f16_q1_fraction_of_copy")
    if fraction is not None:
        lines += ["", f"f16 Q=1 bandwidth target (>= 70% of copy): {fraction:.0%} "
                      f"({'met' if fraction >= 0.7 else 'NOT met'})"]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
