"""flatcoat serve under a real HTTP load generator: wrk against a server process, batching on and off.

One run, one machine, loopback only. For each storage (f32 and int8
``DenseIndex`` over N x 384 clustered unit vectors, bench/datasets.py, saved
to disk) and each mode (micro-batching on, ``--no-batching``), a ``flatcoat
serve`` subprocess is started on the saved directory and wrk (Debian's
``apt-get install -y wrk``) posts ``/search`` bodies of one query each (k = 10,
bench/wrk_search.lua) at concurrency 1, 8 and 64: throughput, p50/p99
latency. The server's own ``/metrics`` are read before and after each wrk run
for the core-call times and the batch sizes of the same requests, so the
server overhead at concurrency 1 is the HTTP round trip (wrk's mean latency)
minus the core call (the server's mean ``flatcoat_core_call_seconds``) in the
same run (each point starts once the previous one's backlog is answered). wrk runs on the same
cores as the server (2 threads at most here).

Usage::

    python bench/serve.py --quick                       # N = 100k, 5 s per point
    flock /tmp/fc-cpu.lock python bench/serve.py --json serve.json   # N = 1M, 15 s per point

Targets (issue 16): at concurrency 64 batching on >= 4x the throughput of
batching off (f32); the batched p99 at concurrency 1 within 2x the unbatched
p99 at concurrency 1 plus the batching wait; overhead at concurrency 1 <= 1 ms.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.datasets import clustered  # noqa: E402
from bench.dense import cpu_model, git_state  # noqa: E402

import flatcoat  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "wrk_search.lua")
K = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes = None, timeout: float = 600) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def scrape(url: str) -> Dict[str, float]:
    """The metrics bench/serve.py reads: core search time and batch sizes (sums and counts)."""
    text = http("GET", url + "/metrics").decode()
    out = {}
    for name, pattern in (("core_sum", r'^flatcoat_core_call_seconds_sum\{op="search"\} (\S+)'),
                          ("core_count", r'^flatcoat_core_call_seconds_count\{op="search"\} (\S+)'),
                          ("batch_sum", r"^flatcoat_batch_queries_sum (\S+)"),
                          ("batch_count", r"^flatcoat_batch_queries_count (\S+)"),
                          ("server_sum", r'^flatcoat_request_seconds_sum\{endpoint="/search"\} (\S+)'),
                          ("server_count", r'^flatcoat_request_seconds_count\{endpoint="/search"\} (\S+)')):
        m = re.search(pattern, text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


class Server:
    def __init__(self, path: str, batching: bool, max_wait_ms: float, max_batch: int, log):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "flatcoat.cli", "serve", path, "--port", str(self.port), "--max-batch",
               str(max_batch), "--max-wait-ms", str(max_wait_ms), "--snapshot-every-s", "0"]
        if not batching:
            cmd.append("--no-batching")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see its log")
            try:
                http("GET", self.url + "/health", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start within 600 s") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wrk(url: str, bodies: str, concurrency: int, seconds: float) -> dict:
    threads = min(concurrency, 2)
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "60s", "--latency",
           "-s", LUA, url, "--", bodies]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def settle(url: str) -> None:
    """Waits until the server has answered every request wrk left behind (a closed connection's
    request still runs), so that no point measures the previous one's backlog."""
    last = scrape(url)
    while True:
        time.sleep(max(0.3, 3 * last["core_sum"] / max(last["core_count"], 1)))
        now = scrape(url)
        if now["core_count"] == last["core_count"] and now["server_count"] == last["server_count"]:
            return
        last = now


def point(server: Server, bodies: str, concurrency: int, seconds: float) -> dict:
    settle(server.url)
    before = scrape(server.url)
    w = wrk(server.url, bodies, concurrency, seconds)
    after = scrape(server.url)
    d = {k: after[k] - before[k] for k in after}
    ok = w["requests"] - w["non_2xx"]
    core_mean = d["core_sum"] / d["core_count"] if d["core_count"] else float("nan")
    return {
        "concurrency": concurrency, "requests": w["requests"], "non_2xx": w["non_2xx"],
        "errors": w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"],
        "qps": ok / (w["duration_us"] / 1e6), "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
        "mean_ms": w["mean_us"] / 1000, "core_calls": d["core_count"], "core_mean_ms": core_mean * 1000,
        "mean_batch": d["batch_sum"] / d["batch_count"] if d["batch_count"] else float("nan"),
        # the HTTP round trip minus the core call; meaningful at concurrency 1 (one request per call)
        "overhead_ms": w["mean_us"] / 1000 - core_mean * 1000,
        "server_mean_ms": 1000 * d["server_sum"] / d["server_count"] if d["server_count"] else float("nan"),
    }


def write_bodies(path: str, queries: np.ndarray) -> None:
    with open(path, "w") as f:
        for q in queries:
            f.write(json.dumps({"vectors": [[float(f"{v:.6g}") for v in q]], "k": K}) + "\n")


def run(args) -> dict:
    work = args.workdir or tempfile.mkdtemp(prefix="fc-serve-bench-")
    os.makedirs(work, exist_ok=True)
    n = args.n or (100_000 if args.quick else 1_000_000)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    t0 = time.perf_counter()
    base, queries = clustered(n, args.dim, n_queries=256, seed=0)
    bodies = os.path.join(work, "bodies.jsonl")
    write_bodies(bodies, queries)
    print(f"data: {n} x {args.dim} clustered in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report = {"n": n, "dim": args.dim, "k": K, "seconds_per_point": seconds, "max_wait_ms": args.max_wait_ms,
              "max_batch": args.max_batch, "date": datetime.date.today().isoformat(), "commit": git_state(),
              "cpu": cpu_model(), "flatcoat": flatcoat.info(), "rows": [],
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    log = open(os.path.join(work, "server.log"), "ab")
    try:
        for storage in args.storages:
            path = os.path.join(work, f"dense-{storage}")
            if not os.path.isdir(path):
                t1 = time.perf_counter()
                index = flatcoat.DenseIndex(args.dim, storage=storage)
                index.add(base)
                index.save(path)
                del index
                print(f"{storage}: built and saved in {time.perf_counter() - t1:.1f} s", file=sys.stderr)
            for batching in (False, True):
                server = Server(path, batching, args.max_wait_ms, args.max_batch, log)
                try:
                    wrk(server.url, bodies, 8, min(2.0, seconds))  # warm-up: pages mapped, code paths hot
                    for c in args.concurrency:
                        row = {"storage": storage, "batching": batching, **point(server, bodies, c, seconds)}
                        report["rows"].append(row)
                        print(json.dumps(row), file=sys.stderr)
                finally:
                    server.stop()
    finally:
        log.close()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report["targets"] = targets(report)
    return report


def _row(report, storage, batching, c):
    for r in report["rows"]:
        if r["storage"] == storage and r["batching"] == batching and r["concurrency"] == c:
            return r
    return None


def targets(report) -> List[dict]:
    out = []
    on, off = _row(report, "f32", True, 64), _row(report, "f32", False, 64)
    if on and off:
        ratio = on["qps"] / off["qps"]
        out.append({"target": "f32, c=64: batching on >= 4x the throughput of batching off",
                    "value": f"{ratio:.2f}x ({on['qps']:.1f} vs {off['qps']:.1f} q/s)", "met": ratio >= 4})
    for storage in args_storages(report):
        on1, off1 = _row(report, storage, True, 1), _row(report, storage, False, 1)
        if on1 and off1:
            bound = 2 * off1["p99_ms"] + report["max_wait_ms"]
            out.append({"target": f"{storage}, c=1: batched p99 <= 2 x unbatched p99 + wait",
                        "value": f"{on1['p99_ms']:.2f} ms vs bound {bound:.2f} ms", "met": on1["p99_ms"] <= bound})
        for batching in (False, True):
            r = _row(report, storage, batching, 1)
            if r:
                out.append({"target": f"{storage}, c=1, batching {'on' if batching else 'off'}: server overhead "
                                      "<= 1 ms", "value": f"{r['overhead_ms']:.3f} ms", "met": r["overhead_ms"] <= 1.0})
    five = sum(r["non_2xx"] for r in report["rows"])
    out.append({"target": "no non-2xx answers under load", "value": str(five), "met": five == 0})
    return out


def args_storages(report):
    return list(dict.fromkeys(r["storage"] for r in report["rows"]))


def table(report) -> str:
    head = ("storage | batching | c | q/s | p50 ms | p99 ms | mean ms | core ms | overhead ms | mean batch | non-2xx")
    lines = [f"| {head} |", "|" + "---|" * len(head.split("|"))]
    for r in report["rows"]:
        lines.append(f"| {r['storage']} | {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['qps']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} | {r['core_mean_ms']:.2f} | "
                     f"{r['overhead_ms']:.3f} | {r['mean_batch']:.1f} | {r['non_2xx']} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |" for t in report["targets"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 100k, 5 s per point")
    p.add_argument("--n", type=int, default=None, help="rows (default 1,000,000; --quick 100,000)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--storages", default="f32,int8", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--concurrency", default="1,8,64", type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--seconds", type=float, default=None, help="wrk duration per point (default 15, --quick 5)")
    p.add_argument("--max-wait-ms", type=float, default=1.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--workdir", default=None, help="keep the data and indexes here (reused when present)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/serve.py: wrk not found; apt-get install -y wrk", file=sys.stderr)
        return 2
    report = run(args)
    print(f"flatcoat serve, {report['n']} x {report['dim']} clustered, k = {K}, {report['seconds_per_point']:g} s "
          f"per point, max wait {report['max_wait_ms']:g} ms, max batch {report['max_batch']}")
    print(f"{report['date']}, commit {report['commit']}, {report['cpu']}, {report['flatcoat']['threads']} threads, "
          f"ISA {report['flatcoat']['isa']}; command: {report['command']}\n")
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
