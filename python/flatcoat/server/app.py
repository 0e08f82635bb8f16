"""The HTTP application of ``flatcoat serve``: FastAPI routes over one index or Retriever.

:class:`Service` owns the served object and everything that touches it: the
worker thread (one ``ThreadPoolExecutor`` thread: every search and write runs
there, in order, so the event loop never blocks and a Retriever, which is not
thread-safe, is only ever used by one thread; the core parallelises each call
itself), the :class:`~flatcoat.server.batching.MicroBatcher`, the
:class:`~flatcoat.server.wal.WriteAheadLog` and the Prometheus metrics.
:func:`create_app` wraps a service in a FastAPI application; :func:`run`
serves it with uvicorn.

The served object is duck-typed: anything with ``search``/``add``/``upsert``/
``remove``/``save`` and ``dim`` is an index (``DenseIndex``, ``IVFIndex``, a
sharded index); anything with an ``encoder`` and an ``index`` is a Retriever.
"""


import asyncio
import hmac
import inspect
import ipaddress
import json
import math
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .batching import MicroBatcher
from .wal import Record, WriteAheadLog

__all__ = ["ServeConfig", "Service", "ApiError", "create_app", "run", "is_loopback", "wal_dir_for"]

ENDPOINTS = ("/search", "/add", "/upsert", "/remove", "/health", "/info", "/metrics", "/openapi.json", "/docs")


@dataclass
class ServeConfig:
    """The settings of ``flatcoat serve`` (its options, same names and defaults)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    max_batch: int = 64
    max_wait_ms: float = 1.0
    batching: bool = True
    snapshot_every_s: float = 60.0
    max_body_mb: float = 64.0
    max_k: int = 10000


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def wal_dir_for(path) -> Path:
    """Where the write-ahead log of the index at ``path`` lives: ``PATH.wal/``, beside it (a save
    replaces the directory ``PATH`` whole, so the log cannot live inside it)."""
    p = Path(path)
    return p.with_name(p.name + ".wal")


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _library_error(exc: BaseException) -> Optional[ApiError]:
    """The answer for an exception of the library: bad input is a 4xx, anything else is not ours."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, KeyError):
        return ApiError(404, _message(exc))
    if isinstance(exc, (TypeError, ValueError, OverflowError)):
        return ApiError(400, _message(exc))
    return None


def _finite_or_none(rows: List[List[float]]) -> List[List[Optional[float]]]:
    return [[s if math.isfinite(s) else None for s in row] for row in rows]


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_jsonable).encode()


class _Metrics:
    """The Prometheus metrics of one service, in their own registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        latency = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
        self.requests = Counter("flatcoat_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("flatcoat_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 buckets=latency, registry=self.registry)
        self.core = Histogram("flatcoat_core_call_seconds", "Time of one call into the index (worker thread)",
                              ["op"], buckets=latency, registry=self.registry)
        self.batch_queries = Histogram("flatcoat_batch_queries", "Queries per search call into the index",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                                       registry=self.registry)
        self.batch_requests = Histogram("flatcoat_batch_requests", "HTTP requests coalesced into one search call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.entries = Gauge("flatcoat_index_entries", "Entries in the served index", registry=self.registry)
        self.wal_records = Gauge("flatcoat_wal_records", "Records in the write-ahead log since the last snapshot",
                                 registry=self.registry)
        self.snapshots = Counter("flatcoat_snapshots", "Snapshots written", registry=self.registry)
        self.fsyncs = Counter("flatcoat_wal_fsyncs", "fsync calls of the write-ahead log (group commit)",
                              registry=self.registry)
        self._per_request: Dict[Tuple[str, int], Tuple[Any, Any]] = {}

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Counts one answered request (the label lookups done once per endpoint and status)."""
        children = self._per_request.get((endpoint, status))
        if children is None:
            children = (self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint))
            self._per_request[(endpoint, status)] = children
        children[0].inc()
        children[1].observe(seconds)


class Service:
    """One served object (an index or a Retriever) with its worker thread, batcher, log and metrics.

    ``obj``: the object; ``path``: where it was loaded from (its snapshots go
    there and its write-ahead log beside it); without a path writes are kept
    in memory only (tests). Construct with :meth:`open` to load ``path`` and
    replay its log.
    """

    def __init__(self, obj: Any, config: Optional[ServeConfig] = None, *, path=None):
        self.obj = obj
        self.config = config or ServeConfig()
        self.path = None if path is None else Path(path)
        self.is_retriever = hasattr(obj, "encoder") and hasattr(obj, "index")
        if not self.is_retriever:
            missing = [m for m in ("search", "add", "upsert", "remove", "dim") if not hasattr(obj, m)]
            if missing:
                raise TypeError(f"serve: {type(obj).__name__} is neither an index nor a Retriever "
                                f"(no {', '.join(missing)})")
            if hasattr(obj, "num_tokens"):
                raise TypeError("serve: a MultiVectorIndex takes token matrices, which this server does not read "
                                "yet; serve a Retriever over it (flatcoat index --multivector)")
        self.metrics = _Metrics()
        self._core_search_seconds = self.metrics.core.labels("search")
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flatcoat-worker")
        self.syncer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="flatcoat-wal")
        # /search requests the server has taken in and not yet answered (the ASGI
        # guard counts them): the batcher waits for company only while some of
        # them have not reached it yet.
        self.searches_in_flight = 0
        self.batcher = MicroBatcher(self._search_batch, self.worker, max_batch=self.config.max_batch,
                                    max_wait_s=self.config.max_wait_ms / 1000.0, enabled=self.config.batching,
                                    on_call=self._on_search_call,
                                    arriving=lambda: self.searches_in_flight - self.batcher.queued)
        self.wal: Optional[WriteAheadLog] = None
        self.replayed = 0
        signature = inspect.signature(obj.search).parameters
        # A wrapper taking **kwargs (a sharded index) is trusted with every argument; it refuses what it lacks.
        self._search_accepts = (None if any(p.kind is p.VAR_KEYWORD for p in signature.values())
                                else set(signature))
        self._closed = False
        self._fsyncs_counted = 0
        self._snapshot_lock = threading.Lock()
        self.writes_refused = None
        if not self.config.api_key and not is_loopback(self.config.host):
            self.writes_refused = (f"writes are refused: the server is bound to {self.config.host}, beyond loopback, "
                                   "without an API key; restart it with --api-key K (or FLATCOAT_API_KEY) and send "
                                   "'Authorization: Bearer K'")
        self._update_gauges()

    @classmethod
    def open(cls, path, config: Optional[ServeConfig] = None) -> "Service":
        """Loads the index or Retriever saved at ``path`` and replays its write-ahead log."""
        import flatcoat

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"PATH: {path} is not a directory; save an index or a Retriever there first "
                                    "(index.save(PATH), or flatcoat index CORPUS --out PATH)")
        svc = cls(flatcoat.load(path), config, path=path)
        svc.open_log()
        return svc

    def open_log(self) -> None:
        """Opens ``PATH.wal/`` and replays it onto the object (idempotently: adds and upserts as upserts,
        removes of absent ids ignored), so records already in the snapshot change nothing."""
        self.wal = WriteAheadLog(wal_dir_for(self.path))
        records = self.wal.replay()
        for n, record in enumerate(records):
            try:
                self._replay(record)
            except Exception as exc:
                raise RuntimeError(f"{self.wal.path}: record {n} ({record.op} of {len(record.ids)} ids) cannot be "
                                   f"replayed onto {self.path}: {_message(exc)}") from exc
        self.replayed = len(records)
        self._update_gauges()

    # ------------------------------------------------------------------ the served object
    @property
    def kind(self) -> str:
        if self.is_retriever:
            return "retriever"
        return {"DenseIndex": "dense", "IVFIndex": "ivf"}.get(type(self.obj).__name__, type(self.obj).__name__)

    @property
    def dim(self) -> int:
        return int(self.obj.encoder.dim if self.is_retriever else self.obj.dim)

    def _index(self):
        return self.obj.index if self.is_retriever else self.obj

    def _update_gauges(self) -> None:
        self.metrics.entries.set(len(self.obj))
        self.metrics.wal_records.set(0 if self.wal is None else self.wal.records)

    def info(self) -> Dict[str, Any]:
        import flatcoat

        index = self._index()
        out: Dict[str, Any] = {
            "kind": self.kind, "class": type(self.obj).__name__, "dim": self.dim, "count": len(self.obj),
            "schema": dict(getattr(index, "schema", {}) or {}),
            "storage": getattr(index, "storage", None), "metric": getattr(index, "metric", None),
            "batching": {"enabled": self.config.batching, "max_batch": self.config.max_batch,
                         "max_wait_ms": self.config.max_wait_ms},
            "limits": {"max_k": self.config.max_k, "max_body_mb": self.config.max_body_mb},
            "writes": "refused: " + self.writes_refused if self.writes_refused else
                      ("need an API key" if self.config.api_key else "open"),
            "path": None if self.path is None else str(self.path),
            "wal": None if self.wal is None else {"path": str(self.wal.path), "records": self.wal.records,
                                                  "bytes": self.wal.size(), "replayed_at_start": self.replayed},
            "snapshot_every_s": self.config.snapshot_every_s,
            "flatcoat": flatcoat.info(),
        }
        if self.is_retriever:
            out.update(index_class=type(index).__name__, reranker=self.obj.reranker, lexical=self.obj.lexical,
                       encoder=repr(self.obj.encoder))
        if hasattr(index, "nlist"):
            out["nlist"] = index.nlist
        return out

    # ------------------------------------------------------------------ search
    def prepare_search(self, vectors, texts, k, filter, rerank, nprobe, hybrid,
                       index_options=None) -> Tuple[Dict[str, Any], Any, int]:
        """Checks one request on the event loop (so a bad request never fails a batch): returns the
        search parameters, the payload (a float32 (q, dim) array or a list of texts) and q."""
        if k > self.config.max_k:
            raise ApiError(422, f"k: at most {self.config.max_k} (the server's --max-k), got {k}")
        if (vectors is None) == (texts is None):
            raise ApiError(400, "vectors, texts: send exactly one of them ('vectors' for an index, 'texts' for a "
                                "Retriever)")
        params: Dict[str, Any] = {"k": k}
        for name, value in (("filter", filter), ("rerank", rerank), ("nprobe", nprobe), ("hybrid", hybrid),
                            ("index_options", index_options)):
            if value is None:
                continue
            if self._search_accepts is not None and name not in self._search_accepts:
                raise ApiError(400, f"{name}: the served {type(self.obj).__name__} does not take {name}"
                                    + (" (only an IVFIndex, or a Retriever over one)" if name == "nprobe" else
                                       " (only a Retriever with a lexical stage)" if name == "hybrid" else
                                       " (only a Retriever: its first stage's search arguments)"
                                       if name == "index_options" else ""))
            params[name] = value
        if self.is_retriever:
            if texts is None:
                raise ApiError(400, "vectors: this server holds a Retriever, which searches by text; send "
                                    "'texts': [\"...\"]")
            from ..encoders import check_texts

            items = check_texts(texts, "texts")
            return params, items, len(items)
        if vectors is None:
            raise ApiError(400, f"texts: this server holds a {type(self.obj).__name__}, which has no encoder; send "
                                f"'vectors': [[...{self.dim} numbers...]]")
        q = self._vectors(vectors)
        return params, q, q.shape[0]

    def _vectors(self, vectors) -> np.ndarray:
        # The model has checked that these are lists of numbers: a well-formed request costs one
        # conversion and one range check (NaN fails it too); anything else goes through the checks
        # below, which name the fault.
        try:
            q = np.array(vectors, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):  # ragged, or an integer beyond float64
            q = None
        if q is not None and q.ndim == 2 and q.shape[0] and q.shape[1] == self.dim and np.abs(q).max() <= _FLOAT32_MAX:
            return q.astype(np.float32)
        from .._validate import as_float_matrix

        if len(vectors) == 0:
            raise ApiError(400, f"vectors: empty; send at least one vector of {self.dim} numbers")
        for i, row in enumerate(vectors):
            if len(row) != self.dim:
                raise ApiError(400, f"vectors[{i}]: expected {self.dim} numbers (the index's dimension), "
                                    f"got {len(row)}")
        return as_float_matrix(vectors, "vectors", self.dim)

    def _search_batch(self, params: Dict[str, Any], payloads: List[Any]) -> List[Any]:
        """One search over the payloads of several requests (worker thread); one result per payload."""
        kw = {name: value for name, value in params.items() if name != "k"}
        t0 = time.perf_counter()
        if self.is_retriever:
            texts = [t for p in payloads for t in p]
            hits = self.obj.search(texts, params["k"], batch_size=max(32, len(texts)), **kw)
            out, start = [], 0
            for p in payloads:
                out.append(hits[start : start + len(p)])
                start += len(p)
        else:
            q = payloads[0] if len(payloads) == 1 else np.concatenate(payloads)
            scores, ids = self.obj.search(q, params["k"], **kw)
            out, start = [], 0
            for p in payloads:
                out.append((scores[start : start + p.shape[0]], ids[start : start + p.shape[0]]))
                start += p.shape[0]
        elapsed = time.perf_counter() - t0
        self._core_search_seconds.observe(elapsed)
        return [(r, elapsed) for r in out]

    def _on_search_call(self, requests: int, queries: int, seconds: float) -> None:
        self.metrics.batch_requests.observe(requests)
        self.metrics.batch_queries.observe(queries)

    async def search(self, **request) -> Tuple[Dict[str, Any], float]:
        """The answer to one /search request and the seconds its core call took."""
        try:
            params, payload, count = self.prepare_search(**request)
            result, core_s = await self.batcher.submit(params, payload, count)
        except Exception as exc:
            err = _library_error(exc)
            if err is None:
                raise
            raise err from None
        if self.is_retriever:
            hits = result
            body = {
                "ids": [[h.id for h in row] for row in hits],
                "scores": _finite_or_none([[float(h.score) for h in row] for row in hits]),
                "hits": [[{"id": h.id, "score": float(h.score) if math.isfinite(h.score) else None, "text": h.text,
                           "metadata": h.metadata} for h in row] for row in hits],
            }
        else:
            scores, ids = result
            s = scores.tolist()
            body = {"ids": ids.tolist(), "scores": s if np.isfinite(scores).all() else _finite_or_none(s)}
        return body, core_s

    # ------------------------------------------------------------------ writes
    def check_write_allowed(self, headers) -> None:
        key = self.config.api_key
        if key:
            given = None
            auth = headers.get("authorization")
            if auth and auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
            elif headers.get("x-api-key") is not None:
                given = headers.get("x-api-key")
            if given is None or not hmac.compare_digest(given.encode(), key.encode()):
                raise ApiError(401, "authorization: writes need the server's API key, as 'Authorization: Bearer K' "
                                    "or 'X-API-Key: K'" + ("" if given is None else " (the key sent is not it)"))
        elif self.writes_refused:
            raise ApiError(403, self.writes_refused)

    def _write_fields(self, op: str, vectors, texts, ids, attributes, metadata):
        if attributes is not None and metadata is not None:
            raise ApiError(400, "attributes, metadata: send one of them (they are the same thing: 'attributes' for "
                                "an index, 'metadata' for a Retriever)")
        values = attributes if attributes is not None else metadata
        if op == "upsert" and ids is None:
            raise ApiError(400, "ids: upsert needs the ids to add or replace (add chooses ids itself)")
        if self.is_retriever:
            if vectors is not None or texts is None:
                raise ApiError(400, "texts: this server holds a Retriever: send 'texts' (it encodes them), not "
                                    "vectors")
            from ..encoders import check_texts

            return check_texts(texts, "texts"), values
        if texts is not None or vectors is None:
            raise ApiError(400, f"vectors: this server holds a {type(self.obj).__name__}: send 'vectors' "
                                f"({self.dim} numbers each), not texts")
        return self._vectors(vectors), values

    def _apply(self, op: str, data, ids, values) -> Tuple[List[Any], int]:
        """Applies one write in memory, then appends it to the log (worker thread: log order is apply
        order). Returns the ids used and the record's sequence number (0 without a log)."""
        t0 = time.perf_counter()
        if op == "remove":
            removed = self.obj.remove(ids)
            used, record = ids, Record("remove", list(ids))
            result: List[Any] = [removed]
        else:
            method = getattr(self.obj, op)
            if self.is_retriever:
                used = list(method(data, ids, metadata=values))
                record = Record(op, used, texts=list(data), metadata=values)
            else:
                used = np.asarray(method(data, ids, attributes=values)).tolist()
                record = Record(op, used, vectors=data, attributes=values)
            result = used
        seq = self.wal.append(record) if self.wal is not None else 0
        self.metrics.core.labels(op).observe(time.perf_counter() - t0)
        self._update_gauges()
        return result, seq

    def _replay(self, record: Record) -> None:
        if record.op == "remove":
            try:
                self.obj.remove(record.ids)
            except KeyError:  # some were removed already (the snapshot holds the removal): the rest one by one
                for i in record.ids:
                    try:
                        self.obj.remove([i])
                    except KeyError:
                        pass
        elif self.is_retriever:
            self.obj.upsert(record.texts, record.ids, metadata=record.metadata)
        else:
            self.obj.upsert(record.vectors, record.ids, attributes=record.attributes)

    async def write(self, op: str, headers, *, vectors=None, texts=None, ids=None, attributes=None,
                    metadata=None) -> Dict[str, Any]:
        """Applies, logs and fsyncs one write, then returns its answer (the ids used, or the count removed)."""
        loop = asyncio.get_running_loop()
        try:
            self.check_write_allowed(headers)
            if op == "remove":
                data, values = None, None
                if not ids:
                    raise ApiError(400, "ids: send at least one id to remove")
            else:
                data, values = self._write_fields(op, vectors, texts, ids, attributes, metadata)
            result, seq = await loop.run_in_executor(self.worker, self._apply, op, data, ids, values)
        except Exception as exc:
            err = _library_error(exc)
            if err is None:
                raise
            raise err from None
        if self.wal is not None:
            try:
                await loop.run_in_executor(self.syncer, self.wal.sync, seq)
            except OSError as exc:
                raise ApiError(503, f"write-ahead log: fsync failed ({exc}); the write is applied in memory but "
                                    "not durable") from None
            fsyncs = self.wal.fsyncs
            self.metrics.fsyncs.inc(fsyncs - self._fsyncs_counted)
            self._fsyncs_counted = fsyncs
        return {"removed": result[0]} if op == "remove" else {"ids": result}

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, force: bool = False) -> bool:
        """Folds the log into a snapshot (worker thread): every record synced, ``obj.save(PATH)``
        (atomic), then an empty log. Skipped when the log is empty (unless ``force``)."""
        if self.wal is None or self.path is None:
            return False
        with self._snapshot_lock:
            if not force and self.wal.records == 0:
                return False
            self.wal.sync()
            self.obj.save(self.path)
            self.wal.rotate()
            self.metrics.snapshots.inc()
            self._update_gauges()
            return True

    async def snapshot_loop(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.config.snapshot_every_s
        while True:
            await asyncio.sleep(every)
            try:
                await loop.run_in_executor(self.worker, self.snapshot)
            except Exception:  # noqa: BLE001 - the log still holds every write: report and go on
                print(f"flatcoat serve: snapshot failed:\n{traceback.format_exc()}", file=sys.stderr)

    async def close(self) -> None:
        """Drains the batcher, writes the final snapshot and closes the log (after the last request)."""
        if self._closed:
            return
        self._closed = True
        await self.batcher.close()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.worker, self.snapshot)
        finally:
            if self.wal is not None:
                self.wal.close()
            self.worker.shutdown(wait=True)
            self.syncer.shutdown(wait=True)


# ---------------------------------------------------------------------- the FastAPI app
def _models(max_k: int):
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

    Id = Union[StrictInt, StrictStr]
    Attributes = Optional[Union[List[Dict[str, Any]], Dict[str, List[Any]]]]
    Number = Union[StrictInt, StrictFloat]

    class SearchRequest(BaseModel):
        """Search by ``vectors`` (an index) or ``texts`` (a Retriever); the other fields as in ``search()``."""

        model_config = ConfigDict(extra="forbid")
        vectors: Optional[List[List[Number]]] = Field(None, description="queries, one list of dim numbers each")
        texts: Optional[List[StrictStr]] = Field(None, description="query texts (a Retriever)")
        k: StrictInt = Field(10, ge=1, le=max_k, description="results per query")
        filter: Optional[Union[Dict[str, Any], List[Id]]] = Field(
            None, description="a dict predicate over the attributes (docs/filters.md) or a list of allowed ids")
        rerank: Optional[StrictInt] = Field(None, ge=1, description="depth of exact re-ranking (>= k)")
        nprobe: Optional[StrictInt] = Field(None, ge=1, description="lists scanned per query (an IVF index)")
        hybrid: Optional[Union[StrictBool, StrictStr, Dict[str, Any]]] = Field(
            None, description="a Retriever's fusion: dense, lexical, rrf, convex, union, or a dict of its fields")
        index_options: Optional[Dict[str, Number]] = Field(
            None, description="a Retriever's first-stage search arguments, e.g. {\"ndocs\": 256} (PlaidIndex: "
                              "nprobe, ncandidates, ndocs, centroid_threshold; IVFIndex: nprobe)")

    class Hit(BaseModel):
        id: Id
        score: Optional[float]
        text: Optional[str]
        metadata: Dict[str, Any]

    class SearchResponse(BaseModel):
        ids: List[List[Id]] = Field(description="per query, best first; -1 pads a row with fewer matches")
        scores: List[List[Optional[float]]] = Field(description="per query; null where the score is infinite")
        hits: Optional[List[List[Hit]]] = Field(None, description="a Retriever's hits")

    class WriteRequest(BaseModel):
        """``vectors`` (an index) or ``texts`` (a Retriever), optional ``ids`` (required for upsert) and
        ``attributes`` / ``metadata`` (a list of dicts or a dict of columns)."""

        model_config = ConfigDict(extra="forbid")
        vectors: Optional[List[List[Number]]] = None
        texts: Optional[List[StrictStr]] = None
        ids: Optional[List[Id]] = None
        attributes: Attributes = None
        metadata: Attributes = None

    class WriteResponse(BaseModel):
        ids: List[Id] = Field(description="the ids written (automatic ones included)")

    class RemoveRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: List[Id]

    class RemoveResponse(BaseModel):
        removed: int

    class ErrorResponse(BaseModel):
        error: str

    return SearchRequest, SearchResponse, WriteRequest, WriteResponse, RemoveRequest, RemoveResponse, ErrorResponse


def _validation_message(errors) -> Tuple[int, str]:
    parts, status = [], 422
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            status = 400
            parts.append(f"body: malformed JSON ({e.get('ctx', {}).get('error', e.get('msg'))})")
            continue
        name = ".".join(loc) if loc else "body"
        parts.append(f"{name}: {e.get('msg')}")
    return status, "; ".join(parts) or "body: invalid request"


async def _answer_search(service: Service, request) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
    """Status, JSON body and extra headers of the answer to one parsed /search request."""
    try:
        result, core_s = await service.search(vectors=request.vectors, texts=request.texts, k=request.k,
                                              filter=request.filter, rerank=request.rerank, nprobe=request.nprobe,
                                              hybrid=request.hybrid, index_options=request.index_options)
    except ApiError as exc:
        return exc.status, _dumps({"error": exc.message}), []
    return 200, _dumps(result), [(b"server-timing", f"core;dur={core_s * 1000:.3f}".encode())]


def _internal_error(path: str, exc: BaseException) -> str:
    """Logs an unexpected exception with its traceback; returns the message a 500 answer carries."""
    print(f"flatcoat serve: internal error on {path}:\n{traceback.format_exc()}", file=sys.stderr)
    return f"internal error ({type(exc).__name__}); see the server's log"


class _Guard:
    """Raw ASGI middleware, before FastAPI parses anything: the body limit (413), the request
    metrics, and the answer to POST /search.

    /search is answered here: its body is read by pydantic's own JSON parser straight from the
    bytes (FastAPI's json.loads and then validation of Python objects take three times as long
    for a 384-number query), and Starlette's routing and response objects are skipped. At
    concurrency 1 over 1M x 384 rows that and the changes beside it took the server's own time
    per request from 1.8 to 0.9 ms (docs/serving.md). The model, the 4xx messages and the answer are those of the
    FastAPI route, which documents /search in the OpenAPI schema.
    """

    def __init__(self, app, service: Service, search_request):
        self.app = app
        self.service = service
        self.limit = int(service.config.max_body_mb * 1024 * 1024)
        self.search_request = search_request  # the route's model

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        t0 = time.perf_counter()
        status = [500]
        searching = endpoint == "/search"
        if searching:
            self.service.searches_in_flight += 1

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = None
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        length = -1
            if length is not None and (length > self.limit or length < 0):
                return await _send_json(send_tracked, 413 if length > self.limit else 400,
                                        {"error": f"body: {length} bytes, over the server's limit of "
                                                  f"{self.service.config.max_body_mb:g} MB (--max-body-mb)"
                                                  if length > self.limit
                                                  else "content-length: not a non-negative integer"})
            if scope.get("method") not in ("POST", "PUT", "PATCH"):
                return await self.app(scope, receive, send_tracked)
            body = await self._body(receive)
            if body is None:  # no content-length, and more arrived than the limit
                return await _send_json(send_tracked, 413, {"error": f"body: over the server's limit of "
                                                                      f"{self.service.config.max_body_mb:g} MB "
                                                                      "(--max-body-mb)"})
            if searching and scope.get("method") == "POST":
                return await self._search(path, body, send_tracked)
            replayed = [False]

            async def receive_buffered():
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, receive_buffered, send_tracked)
        finally:
            if searching:
                self.service.searches_in_flight -= 1
            self.service.metrics.request_done(endpoint, status[0], time.perf_counter() - t0)

    async def _body(self, receive) -> Optional[bytes]:
        """The whole request body, or None once it passes the limit (a chunked body has no length)."""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _search(self, path: str, body: bytes, send) -> None:
        from pydantic import ValidationError

        try:
            request = self.search_request.model_validate_json(body)
        except ValidationError as exc:
            code, message = _validation_message(exc.errors())
            return await _send_json(send, code, {"error": message})
        try:
            code, content, headers = await _answer_search(self.service, request)
        except Exception as exc:  # noqa: BLE001 - answered as FastAPI's handler answers it: a 500, logged
            code, content, headers = 500, _dumps({"error": _internal_error(path, exc)}), []
        await _send(send, code, content, headers)


async def _send(send, status: int, content: bytes, headers: List[Tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(content)).encode()), *headers]})
    await send({"type": "http.response.body", "body": content})


async def _send_json(send, status: int, value: Any) -> None:
    await _send(send, status, _dumps(value))


def create_app(service: Service):
    """The FastAPI application serving ``service`` (routes, error answers, lifespan: snapshots)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    (SearchRequest, SearchResponse, WriteRequest, WriteResponse, RemoveRequest, RemoveResponse,
     ErrorResponse) = _models(service.config.max_k)
    errors = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 422)}

    @asynccontextmanager
    async def lifespan(app):
        task = None
        if service.wal is not None and service.config.snapshot_every_s > 0:
            task = asyncio.get_running_loop().create_task(service.snapshot_loop())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            await service.close()

    import flatcoat

    app = FastAPI(title="flatcoat", version=flatcoat.__version__, lifespan=lifespan,
                  description="Search, add, upsert and remove over one flatcoat index or Retriever "
                              "(docs/serving.md).")
    app.state.service = service

    def json_response(body: Any, status: int = 200, headers: Optional[Dict[str, str]] = None):
        return Response(content=_dumps(body), status_code=status, media_type="application/json", headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return json_response({"error": exc.message}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        status, message = _validation_message(exc.errors())
        return json_response({"error": message}, status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return json_response({"error": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        return json_response({"error": _internal_error(request.url.path, exc)}, 500)

    @app.post("/search", response_model=SearchResponse, responses=errors,
              summary="The k best entries per query, by vectors or texts")
    async def search(body: SearchRequest):
        # The guard answers POST /search before routing (see _Guard); this route documents it in
        # the OpenAPI schema and answers the same way through the same function.
        status, content, headers = await _answer_search(service, body)
        return Response(content=content, status_code=status, media_type="application/json",
                        headers=dict((k.decode(), v.decode()) for k, v in headers))

    def write_route(op: str, summary: str):
        async def route(body: WriteRequest, request: Request):
            return json_response(await service.write(op, request.headers, vectors=body.vectors, texts=body.texts,
                                                     ids=body.ids, attributes=body.attributes,
                                                     metadata=body.metadata))

        app.post(f"/{op}", response_model=WriteResponse, responses=errors, summary=summary)(route)

    write_route("add", "Adds entries (durable once answered)")
    write_route("upsert", "Adds or replaces entries by id (durable once answered)")

    @app.post("/remove", response_model=RemoveResponse, responses=errors, summary="Removes entries by id")
    async def remove(body: RemoveRequest, request: Request):
        return json_response(await service.write("remove", request.headers, ids=body.ids))

    @app.get("/health", summary="Liveness")
    async def health():
        return json_response({"status": "ok", "count": len(service.obj)})

    @app.get("/info", summary="What is served and how")
    async def info():
        return json_response(service.info())

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service._update_gauges()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Guard, service=service, search_request=SearchRequest)  # outermost of ours: limits and metrics before any parsing
    return app


def run(path, config: ServeConfig) -> None:
    """Serves the index or Retriever at ``path`` until SIGINT/SIGTERM (graceful: in-flight requests
    finish, then the final snapshot)."""
    import uvicorn

    if not is_loopback(config.host) and not config.api_key:
        print(f"flatcoat serve: warning: bound to {config.host}, beyond loopback, without an API key: writes are "
              "refused (403) until the server is restarted with --api-key K or FLATCOAT_API_KEY", file=sys.stderr)
    service = Service.open(path, config)
    if service.replayed:
        print(f"flatcoat serve: replayed {service.replayed} write-ahead log records from {service.wal.path}",
              file=sys.stderr)
    app = create_app(service)
    print(f"flatcoat serve: {service.kind} {path} ({len(service.obj)} entries, dim {service.dim}) on "
          f"http://{config.host}:{config.port} (batching "
          + (f"up to {config.max_batch} queries / {config.max_wait_ms:g} ms" if config.batching else "off") + ")",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, workers=1, log_level="warning", access_log=False,
                timeout_graceful_shutdown=30, lifespan="on")
