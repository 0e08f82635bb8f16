"""Where one /search request's time goes inside `flatcoat serve`, at concurrency 1.

A server process runs with timers wrapped around its stages (the ASGI guard,
the service's checks, the batcher's hand-off to the worker thread, the core
call, the answer, the two writes of headers and body); wrk posts bodies of one
query each at concurrency 1; the table gives each stage's median and mean in
milliseconds, and the server's time beyond the core call. The stages follow
the code of python/flatcoat/server (the timers wrap its functions by name), so
this script changes with it.

Run bench/serve.py with ``--workdir`` first: it saves the indexes and the
request bodies there.

Usage::

    python bench/serve.py --storages f32 --concurrency 1 --seconds 5 --workdir /tmp/servework
    flock /tmp/fc-cpu.lock python bench/serve_profile.py --workdir /tmp/servework --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

STAGES = ["arrived", "parsed", "checked", "submitted", "worker", "core_start", "core_end", "worker_done",
          "resumed", "answered", "headers", "body", "sent", "done"]
LABELS = {
    ("arrived", "parsed"): "body read and parsed",
    ("parsed", "checked"): "request checked (prepare_search)",
    ("checked", "submitted"): "batcher",
    ("submitted", "worker"): "hand-off to the worker thread",
    ("worker", "core_start"): "worker before the core call",
    ("core_start", "core_end"): "core call (index.search)",
    ("core_end", "worker_done"): "worker after the core call",
    ("worker_done", "resumed"): "hand-off back to the event loop",
    ("resumed", "answered"): "answer built (lists, metrics)",
    ("answered", "headers"): "JSON encoded",
    ("headers", "body"): "headers written",
    ("body", "sent"): "body written",
    ("sent", "done"): "guard's bookkeeping",
}


def child(path: str, port: int, batching: bool) -> None:
    """The server, with timers; GET /profile-marks answers every request's marks so far."""
    from flatcoat.server import app as server
    from flatcoat.server import batching as batcher

    clock = time.perf_counter
    marks, current = [], {}

    def wrap_async(owner, name, before=None, after=None):
        original = getattr(owner, name)

        async def timed(*args, **kwargs):
            if before:
                current["m"][before] = clock()
            result = await original(*args, **kwargs)
            if after:
                current["m"][after] = clock()
            return result

        setattr(owner, name, timed)

    guard_call = server._Guard.__call__

    async def guard(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") == "/profile-marks":  # the parent collects them
            body = json.dumps({"marks": marks, "collections": collections}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            return await send({"type": "http.response.body", "body": body})
        if scope["type"] != "http" or scope.get("path") != "/search":
            return await guard_call(self, scope, receive, send)
        m = current["m"] = {"arrived": clock()}

        async def timed_send(message):
            m["headers" if message["type"] == "http.response.start" else "body"] = clock()
            await send(message)
            if message["type"] == "http.response.body":
                m["sent"] = clock()

        await guard_call(self, scope, receive, timed_send)
        m["done"] = clock()
        marks.append(m)

    server._Guard.__call__ = guard
    import gc

    collections, started = [], {}

    def on_gc(phase, info):  # the collector's pauses land in whichever stage they interrupt
        if phase == "start":
            started["t"] = clock()
        else:
            collections.append((info["generation"], clock() - started.pop("t", clock())))

    gc.callbacks.append(on_gc)
    wrap_async(server.Service, "search", before="parsed", after="answered")
    wrap_async(batcher.MicroBatcher, "_call", before="submitted", after="resumed")
    prepare = server.Service.prepare_search

    def timed_prepare(self, *args, **kwargs):
        result = prepare(self, *args, **kwargs)
        current["m"]["checked"] = clock()
        return result

    server.Service.prepare_search = timed_prepare
    search_batch = server.Service._search_batch

    def timed_batch(self, params, payloads):
        m = current["m"]
        m["worker"] = clock()
        index, search = self.obj, self.obj.search

        def timed_search(*args, **kwargs):
            m["core_start"] = clock()
            result = search(*args, **kwargs)
            m["core_end"] = clock()
            return result

        index.search = timed_search
        try:
            return search_batch(self, params, payloads)
        finally:
            del index.search
            m["worker_done"] = clock()

    server.Service._search_batch = timed_batch

    config = server.ServeConfig(port=port, batching=batching, snapshot_every_s=0)
    server.run(path, config)


def table(marks) -> str:
    lines = ["| stage | median ms | mean ms |", "|---|---|---|"]
    for a, b in zip(STAGES, STAGES[1:]):
        values = [1e3 * (m[b] - m[a]) for m in marks if a in m and b in m]
        if values:
            lines.append(f"| {LABELS[(a, b)]} | {statistics.median(values):.3f} | {statistics.mean(values):.3f} |")
    beyond = [1e3 * ((m["done"] - m["arrived"]) - (m["core_end"] - m["core_start"])) for m in marks]
    lines.append(f"| **server time beyond the core call** | **{statistics.median(beyond):.3f}** | "
                 f"**{statistics.mean(beyond):.3f}** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="bench/serve.py's --workdir (indexes and bodies.jsonl)")
    p.add_argument("--storage", default="f32")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--no-batching", action="store_true")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        path, port, batching = args.child
        child(path, int(port), batching == "1")
        return 0
    from bench.serve import free_port, http, wrk

    path = os.path.join(args.workdir, f"dense-{args.storage}")
    bodies = os.path.join(args.workdir, "bodies.jsonl")
    if not (os.path.isdir(path) and os.path.isfile(bodies)):
        sys.exit(f"{path} or {bodies} is missing: run bench/serve.py --storages {args.storage} --workdir "
                 f"{args.workdir} first")
    port = free_port()
    log = open(os.path.join(args.workdir, "profile-server.log"), "ab")
    cmd = [sys.executable, os.path.abspath(__file__), "--workdir", args.workdir, "--child", path, str(port),
           "0" if args.no_batching else "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                http("GET", url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"the server exited with {proc.returncode}; see {log.name}")
                time.sleep(0.2)
        wrk(url, bodies, 1, 2.0)  # pages mapped, code paths hot
        before = json.loads(http("GET", url + "/profile-marks"))
        w = wrk(url, bodies, 1, args.seconds)
        after = json.loads(http("GET", url + "/profile-marks"))
        marks = after["marks"][len(before["marks"]):]
        collections = after["collections"][len(before["collections"]):]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    marks = [m for m in marks if "core_end" in m and "done" in m]
    import flatcoat
    from bench.dense import cpu_model, git_state

    print(f"flatcoat serve, {args.storage}, batching {'off' if args.no_batching else 'on'}, concurrency 1, "
          f"{len(marks)} requests; {cpu_model()}, ISA {flatcoat.info()['isa']}, commit {git_state()}")
    print(f"wrk mean {w['mean_us'] / 1000:.3f} ms, p50 {w['p50_us'] / 1000:.3f} ms\n")
    print(table(marks))
    beyond = sorted(1e3 * ((m["done"] - m["arrived"]) - (m["core_end"] - m["core_start"])) for m in marks)
    print(f"\nserver time beyond the core call: p90 {beyond[int(0.9 * (len(beyond) - 1))]:.3f} ms, "
          f"max {beyond[-1]:.3f} ms")
    for gen in (0, 1, 2):
        pauses = [1e3 * t for g, t in collections if g == gen]
        if pauses:
            print(f"garbage collections of generation {gen}: {len(pauses)}, {sum(pauses):.2f} ms in all, "
                  f"longest {max(pauses):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
