"""The retrieval-quality table over the shared test collections (../shared/data), as markdown.

For each collection: dense f32, int8, binary (with and without exact re-ranking at several depths),
the multi-vector stand-in (exact MaxSim) and BM25 (bm25s), all with the bundled MiniLM, one
document encode per collection (cached with --cache). Equivalent to running, per collection,

    flatcoat eval DIR --storage f32,int8,binary --rerank 100,200,300,500,1000 --multivector --bm25

    python bench/eval_table.py --cache /tmp/flatcoat-cache              # measure and print
    python bench/eval_table.py --from-json /tmp/rows                    # format rows saved by `flatcoat eval --json`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flatcoat.eval import evaluate_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COLLECTIONS = ("scifact", "cranfield", "cisi", "med", "adi")
METRICS = ("ndcg@10", "recall@100", "mrr@10", "map")


def markdown(tables: dict, metric: str) -> str:
    systems = []
    for rows in tables.values():
        for r in rows:
            if r["system"] not in systems:
                systems.append(r["system"])
    names = list(tables)
    out = [f"| {metric} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s in systems:
        cells = []
        for n in names:
            v = next((r[metric] for r in tables[n] if r["system"] == s), None)
            cells.append("" if v is None else f"{v:.3f}")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--collections", default=",".join(COLLECTIONS))
    ap.add_argument("--rerank", default="100,200,300,500,1000", help="comma-separated re-ranking depths")
    ap.add_argument("--cache", default=None, help="embedding cache directory")
    ap.add_argument("--from-json", default=None, help="directory of <collection>.json rows from `flatcoat eval --json`")
    args = ap.parse_args()

    tables = {}
    for name in [c for c in args.collections.split(",") if c]:
        if args.from_json:
            path = Path(args.from_json) / f"{name}.json"
            if path.is_file():
                tables[name] = json.loads(path.read_text())
            continue
        d = Path(args.data) / name
        if not d.is_dir():
            print(f"skipping {name}: {d} is missing", file=sys.stderr)
            continue
        result = evaluate_dataset(
            d, storages=("f32", "int8", "binary"), rerank=[int(x) for x in args.rerank.split(",") if x],
            multivector=True, bm25=True, metrics=METRICS, cache=args.cache,
            log=lambda line, n=name: print(f"{n}: {line}", file=sys.stderr),
        )
        for note in result.notes:
            print(f"{name}: {note}", file=sys.stderr)
        tables[name] = result.rows
    for metric in ("ndcg@10", "recall@100"):
        print(markdown(tables, metric))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
