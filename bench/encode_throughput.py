"""Encoding throughput: flatcoat's Encoder vs a plain onnxruntime loop, same model, same texts, same run.

The baseline is what one writes first: the tokenizer (truncate at 256, pad to the longest in the
batch), an InferenceSession with default options, fixed-size batches in corpus order, masked mean
pooling and L2 normalisation in numpy. flatcoat sorts texts by token count so each batch carries
little padding, and sets its session options explicitly. Both produce the same vectors (checked).

    python bench/encode_throughput.py                      # SciFact's 5,183 documents
    python bench/encode_throughput.py --limit 1000         # a quicker look
    python bench/encode_throughput.py --chunk 1000         # alternate the two in 1000-doc chunks

On a shared machine the background load drifts; ``--chunk N`` times the two implementations
alternately on consecutive N-document chunks of the corpus (flatcoat then sorts only within a
chunk, which understates its gain slightly) so both see the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from flatcoat import models
from flatcoat.corpus import doc_text
from flatcoat.encoders import Encoder
from flatcoat.eval import load_corpus

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def plain_loop(model_path: Path, tokenizer_path: Path, texts, batch_size: int, max_length: int = 256) -> np.ndarray:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length)
    tok.enable_padding()
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tok.encode_batch(texts[start : start + batch_size])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        h = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return np.concatenate(out).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=str(DEFAULT_DATA), help="BEIR-format directory (its corpus.jsonl is encoded)")
    ap.add_argument("--limit", type=int, default=0, help="encode only the first N documents (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=0, help="alternate the two implementations on chunks of N docs (0: whole)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()

    corpus = load_corpus(Path(args.dataset) / "corpus.jsonl")
    texts = [doc_text(d) for d in corpus.values()]
    if args.limit:
        texts = texts[: args.limit]
    files = models.resolve("all-MiniLM-L6-v2")
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2", progress=False)

    # Warm both paths (session creation, first-run allocations) on a few texts, untimed.
    plain_loop(files.model, files.tokenizer, texts[:8], args.batch_size)
    enc.encode_documents(texts[:8], batch_size=args.batch_size)

    chunk = args.chunk or len(texts)
    plain_s = ours_s = 0.0
    base_parts, our_parts = [], []
    for n, start in enumerate(range(0, len(texts), chunk)):
        part = texts[start : start + chunk]
        runs = [("plain", lambda: plain_loop(files.model, files.tokenizer, part, args.batch_size)),
                ("flatcoat", lambda: enc.encode_documents(part, batch_size=args.batch_size))]
        for name, fn in runs if n % 2 == 0 else runs[::-1]:  # alternate which goes first
            t = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t
            if name == "plain":
                plain_s += dt
                base_parts.append(out)
            else:
                ours_s += dt
                our_parts.append(out)
        print(f"  docs {start}..{start + len(part)}: plain {plain_s:.1f} s, flatcoat {ours_s:.1f} s so far", file=sys.stderr)
    base, ours = np.concatenate(base_parts), np.concatenate(our_parts)
    t0, t1, t2 = 0.0, plain_s, plain_s + ours_s

    diff = float(np.abs(base - ours).max())
    res = {
        "dataset": args.dataset,
        "documents": len(texts),
        "batch_size": args.batch_size,
        "chunk": chunk,
        "cpu_count": os.cpu_count(),
        "plain_s": t1 - t0,
        "plain_docs_per_s": len(texts) / (t1 - t0),
        "flatcoat_s": t2 - t1,
        "flatcoat_docs_per_s": len(texts) / (t2 - t1),
        "speedup": (t1 - t0) / (t2 - t1),
        "max_abs_diff": diff,
        "command": "python " + " ".join(sys.argv),
    }
    print(f"{len(texts)} documents from {args.dataset}, batch size {args.batch_size}, chunks of {chunk}, {os.cpu_count()} CPUs")
    print(f"plain onnxruntime loop (corpus order): {res['plain_s']:.1f} s  {res['plain_docs_per_s']:.1f} docs/s")
    print(f"flatcoat Encoder (length-sorted)     : {res['flatcoat_s']:.1f} s  {res['flatcoat_docs_per_s']:.1f} docs/s")
    print(f"speedup {res['speedup']:.2f}x; max |difference| between the two outputs {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
