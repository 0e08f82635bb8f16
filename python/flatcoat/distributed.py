"""ShardedIndex: one index split over Ray actors, searched by scatter-gather (docs/distributed.md).

Each shard is an ordinary flatcoat index (``DenseIndex``, ``IVFIndex`` or
``MultiVectorIndex``) owned by one Ray actor. Entries are routed by id
(``id % shards``); a search goes to every shard and their top-k lists are
merged into the top-k of the whole (ties by the smaller id), so an exact index
answers exactly as one index over the same vectors would. ``save`` writes one
flatcoat directory of kind ``"sharded"`` whose children ``shard_0/ ...`` are
written by the actors themselves; ``flatcoat.load`` opens it (one actor per
shard, each loading its child with mmap).

Failures: an actor is restarted by Ray (``max_restarts=-1``) and reloads its
shard from the last save. Every shard counts the writes it has applied (its
``version``) and every call carries the version the ShardedIndex expects, so
a restarted shard that lost writes made since that save is never read as if
nothing happened: searches fail with :class:`ShardStaleError` naming it, or,
with ``allow_partial=True``, answer from the other shards and say which were
missing (``result.missing`` and a :class:`PartialResultWarning`). A shard
still restarting is retried for up to ``timeout`` seconds, then
:class:`ShardUnavailableError`.

Ray is imported on first use (``pip install 'flatcoat[distributed]'``), so
importing this module, and registering the ``"sharded"`` kind, needs no Ray.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ._attributes import AttributeStore
from ._persist import IndexFormatError, SavedDirectory, read_directory, register_opener, write_directory
from ._records import removal_ids, upsert_ids
from ._validate import RWLock, as_bool, as_choice, as_float_matrix, as_ids, as_int, as_k, as_rerank, auto_ids, lookup_id

_KIND = "sharded"
#: The index kinds a shard can hold (their ``flatcoat.load`` kinds).
INDEX_KINDS = ("dense", "ivf", "multivector")
DEFAULT_TIMEOUT = 30.0
_RETRY_PAUSE = 0.05  # seconds between tries of a shard whose actor is restarting
_PUT_BYTES = 1 << 16  # query batches larger than this go to the object store once, not once per shard
_OK, _MISMATCH, _FAILED = 0, 1, 2


# ----------------------------------------------------------------------------- errors and results


class ShardError(RuntimeError):
    """A shard could not answer as the ShardedIndex expects; ``shards`` maps each to the reason."""

    def __init__(self, message: str, shards: Optional[Dict[int, str]] = None):
        super().__init__(message)
        self.shards = dict(shards or {})

    def __reduce__(self):
        return type(self), (self.args[0], self.shards)


class ShardUnavailableError(ShardError):
    """A shard's actor did not answer within the timeout (restarting, busy or dead)."""


class ShardStaleError(ShardError):
    """A shard holds other than the acknowledged writes: it restarted from its last save and lost the
    writes made since (see :meth:`ShardedIndex.accept_lost_writes`)."""


class PartialResultWarning(UserWarning):
    """A search with ``allow_partial=True`` answered without some shards (``result.missing`` names them)."""


class SearchResult(tuple):
    """``(scores, ids)`` of a :meth:`ShardedIndex.search`; unpacks like every index's result.

    ``missing`` maps each shard that did not contribute (only with
    ``allow_partial=True``) to the reason; ``partial`` is ``bool(missing)``.
    """

    def __new__(cls, scores: np.ndarray, ids: np.ndarray, missing: Optional[Dict[int, str]] = None):
        self = super().__new__(cls, (scores, ids))
        self.missing = dict(missing or {})
        return self

    def __getnewargs__(self):
        return self[0], self[1], self.missing

    @property
    def scores(self) -> np.ndarray:
        return self[0]

    @property
    def ids(self) -> np.ndarray:
        return self[1]

    @property
    def partial(self) -> bool:
        return bool(self.missing)


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError(
            "flatcoat.distributed needs Ray: pip install 'flatcoat[distributed]' (or pip install ray)"
        ) from None
    return ray


# ----------------------------------------------------------------------------- the actor


class _State(NamedTuple):
    """What a shard reports with every answer."""

    identity: Tuple[str, int]  # (incarnation: new each time Ray starts the actor, generation: +1 per restore)
    version: int  # writes applied since the shard was created (continued across save/load)
    count: int
    origin: Optional[Tuple[str, str]]  # (directory, save id) the shard was loaded from; None: created empty
    trained: bool
    error: Optional[str]  # why the shard holds no index (its directory could not be loaded)


def _new_index(kind: str, dim: int, options: dict):
    from .dense import DenseIndex
    from .ivf import IVFIndex
    from .multivector import MultiVectorIndex

    if options.get("device", "cpu") != "cpu":
        raise ValueError(f"device: a shard searches on its actor's CPU; got device={options['device']!r}")
    cls = {"dense": DenseIndex, "ivf": IVFIndex, "multivector": MultiVectorIndex}[kind]
    return cls(dim, **options)


_SAMPLES = {"int": 0, "float": 0.0, "bool": False, "keyword": "x", "keywords": ["x"]}


def _declare_fields(index, schema: dict) -> None:
    """Gives ``index`` every field of ``schema`` (missing on its rows) that it does not have yet.

    A shard's attribute types must be those of the whole index: a field that is
    a float globally but got only ints on this shard would otherwise be an int
    here, and a field no row of this shard has would be unknown to its filters.
    """
    store = index._attrs
    missing = {field: kind for field, kind in schema.items() if field not in store.schema}
    if not missing:
        return
    seed = AttributeStore.parse([{f: _SAMPLES[k] for f, k in missing.items()}], 1).take(np.empty(0, np.int64))
    with index._lock.write():
        index._attrs.append(seed)


def _op_write(name):
    def run(index, *args, _schema=None, **kwargs):
        if _schema:
            _declare_fields(index, _schema)
        return getattr(index, name)(*args, **kwargs)
    return run


def _op_get(index, ids, vectors):
    present = index.matches(ids)
    unknown = np.setdiff1d(ids, present)
    if unknown.size:
        return None, None, unknown
    v, a = index.get(ids, vectors=vectors)
    return v, a, unknown


#: name -> (is a write, function(index, *args, **kwargs)).
_OPERATIONS = {
    "search": (False, lambda index, q, k, **kw: index.search(q, k, **kw)),
    "matches": (False, lambda index, f: index.matches(f)),
    "present": (False, lambda index, ids: index.matches(ids)),
    "get": (False, _op_get),
    "ids": (False, lambda index: index.ids),
    "nbytes": (False, lambda index: index.nbytes),
    "state": (False, lambda index: None),
    "save": (False, lambda index, path: index.save(path)),
    "add": (True, _op_write("add")),
    "upsert": (True, _op_write("upsert")),
    "remove": (True, _op_write("remove")),
    "train": (True, lambda index, x: index.train(x)),
}


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _ShardServer:
    """The body of a shard actor: one index, its write counter, and the identity of this incarnation.

    ``source`` ``(directory, mmap, verify)`` loads child ``shard_<shard>`` of a
    saved ShardedIndex; None creates an empty index from ``spec`` ``(kind, dim,
    options)``. Ray calls ``__init__`` again with the same arguments when it
    restarts the actor, so a restarted shard reloads the directory it was
    created from (the ShardedIndex then moves it to a later save if there is
    one). ``__init__`` never raises: a directory that cannot be read leaves
    the shard without an index and the reason in its state.
    """

    def __init__(self, shard: int, spec: Optional[tuple], source: Optional[tuple], threads: Optional[int]):
        self._shard = shard
        self._spec = spec
        self._incarnation = uuid.uuid4().hex
        self._generation = 0
        if threads is not None:
            from . import set_num_threads

            set_num_threads(threads)
        self._open(source)

    def _open(self, source: Optional[tuple], save_id: Optional[str] = None) -> None:
        self._index, self._version, self._origin, self._error = None, -1, None, None
        try:
            if source is None:
                self._index, self._version = _new_index(*self._spec), 0
                return
            path, mmap, verify = source
            saved = read_directory(path, mmap=mmap, verify=verify, recover=False)
            meta, name = saved.meta, f"shard_{self._shard}"
            versions = meta.get("versions")
            if saved.kind != _KIND or not isinstance(versions, list) or len(versions) <= self._shard:
                raise IndexFormatError(f"{saved.path}: not a sharded index with a shard {self._shard}")
            if save_id is not None and meta.get("save_id") != save_id:
                raise IndexFormatError(f"{saved.path}: was replaced by another save since this index saved it")
            self._origin = (str(saved.path), meta.get("save_id"))
            self._index = saved.open_child(name, mmap=mmap, verify=verify)
            self._version = int(versions[self._shard])
        except Exception as exc:  # reported through the state: Ray must not restart a failing __init__ forever
            self._index, self._version = None, -1
            self._error = f"{type(exc).__name__}: {exc}"

    def state(self) -> _State:
        index = self._index
        return _State(
            (self._incarnation, self._generation), self._version, 0 if index is None else len(index),
            self._origin, bool(getattr(index, "is_trained", True)), self._error,
        )

    def describe(self) -> Optional[dict]:
        index = self._index
        if index is None:
            return None
        kinds = {"DenseIndex": "dense", "IVFIndex": "ivf", "MultiVectorIndex": "multivector"}
        out = {"kind": kinds.get(type(index).__name__), "dim": index.dim, "storage": index.storage,
               "schema": index.schema}
        for name in ("metric", "keep_float", "nlist", "m"):
            if hasattr(index, name):
                out[name] = getattr(index, name)
        return out

    def call(self, expect: tuple, name: str, kwargs: dict, *args):
        """Runs operation ``name`` if this shard is in the state ``expect`` ``(identity, version)`` the
        caller last acknowledged; else changes nothing and answers ``_MISMATCH`` (compare-and-set)."""
        state = self.state()
        if self._index is None or expect != (state.identity, state.version):
            return state, _MISMATCH, None
        write, run = _OPERATIONS[name]
        try:
            value = run(self._index, *args, **kwargs)
        except Exception as exc:  # the index's own refusals (TypeError, ValueError, KeyError) travel back
            return self.state(), _FAILED, _picklable(exc)
        if write:
            self._version += 1  # index writes are all or nothing: a refused one changed nothing
        return self.state(), _OK, value

    def restore(self, identity: tuple, source: tuple, save_id: str) -> _State:
        """Reloads ``source`` if this shard is still ``identity`` (another caller may have restored it)."""
        if identity == self.state().identity:
            self._generation += 1
            self._open(source, save_id)
        return self.state()

    def accept(self, identity: tuple, version: int) -> _State:
        """Continues from what this shard holds, as write number ``version``."""
        if identity == self.state().identity and self._index is not None:
            self._version = int(version)
        return self.state()


@functools.lru_cache(maxsize=None)
def _actor_class():
    # max_task_retries=0: Ray must not replay a call on a restarted actor, whose state may be older than
    # the caller believes. The ShardedIndex retries itself, after checking the shard's version.
    return _ray().remote(max_restarts=-1, max_task_retries=0)(_ShardServer)


# ----------------------------------------------------------------------------- merging


def merge_topk(parts: List[Tuple[np.ndarray, np.ndarray]], nq: int, width: int, smaller_is_better: bool):
    """The best ``width`` of the shards' top-k lists per query: ``(scores float32, ids int64)`` (nq, width).

    Rows best first, ties by the smaller id, padded with id -1 and score -inf
    (+inf when ``smaller_is_better``), as one index would answer.
    """
    pad = np.float32(np.inf if smaller_is_better else -np.inf)
    parts = [p for p in parts if p[1].shape[1]]
    if not parts or width == 0:
        return np.full((nq, width), pad, np.float32), np.full((nq, width), -1, np.int64)
    scores = np.concatenate([np.asarray(p[0], np.float32) for p in parts], axis=1)
    ids = np.concatenate([np.asarray(p[1], np.int64) for p in parts], axis=1)
    key = scores if smaller_is_better else -scores
    key = np.where(ids < 0, np.inf, key)  # padding sorts last
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), key), axis=-1)[:, :width]
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    if ids.shape[1] < width:
        extra = width - ids.shape[1]
        scores = np.concatenate([scores, np.full((nq, extra), pad, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((nq, extra), -1, np.int64)], axis=1)
    scores[ids < 0] = pad
    return np.ascontiguousarray(scores), np.ascontiguousarray(ids)


# ----------------------------------------------------------------------------- the index


class ShardedIndex:
    """An index split over ``shards`` Ray actors; the same methods and result shapes as the index it shards.

    Parameters
    ----------
    dim: vector dimension.
    shards: number of shards (actors); an entry lives on shard ``id % shards``.
    kind: ``"dense"`` (:class:`flatcoat.DenseIndex`), ``"ivf"``
        (:class:`flatcoat.IVFIndex`) or ``"multivector"``
        (:class:`flatcoat.MultiVectorIndex`).
    timeout: seconds a call waits for a shard that is restarting or busy
        before :class:`ShardUnavailableError` (each call may override it).
    threads: core threads per shard (``flatcoat.set_num_threads`` in each
        actor); None keeps the core's default.
    actor_options: passed to Ray's ``.options()`` for every actor (e.g.
        ``{"num_cpus": 1}``, a ``scheduling_strategy``).
    **index_options: the shard index's own parameters (``metric=``,
        ``storage=``, ``keep_float=``, ``nlist=`` ...).

    Call ``ray.init(...)`` first to choose the cluster (else Ray starts a
    local one). Writes (``add``, ``upsert``, ``remove``, ``train``, ``save``)
    run one at a time; searches run concurrently.

    >>> import numpy as np, ray, flatcoat.distributed as fd       # doctest: +SKIP
    >>> ray.init(num_cpus=2)                                       # doctest: +SKIP
    >>> index = fd.ShardedIndex(4, shards=2, metric="ip")          # doctest: +SKIP
    >>> index.add(np.eye(4, dtype=np.float32), ids=[10, 11, 12, 13]).tolist()   # doctest: +SKIP
    [10, 11, 12, 13]
    >>> scores, ids = index.search(np.array([0, 1, 0.5, 0], np.float32), k=2)   # doctest: +SKIP
    >>> ids.tolist(), scores.tolist()                              # doctest: +SKIP
    ([[11, 12]], [[1.0, 0.5]])
    """

    def __init__(self, dim: int, *, shards: int = 2, kind: str = "dense", timeout: float = DEFAULT_TIMEOUT,
                 threads: Optional[int] = None, actor_options: Optional[dict] = None, **index_options):
        dim = as_int(dim, "dim", 1)
        shards = as_int(shards, "shards", 1)
        kind = as_choice(kind, "kind", INDEX_KINDS)
        _new_index(kind, dim, index_options)  # the index's own checks, here, before any actor starts
        self._setup(kind, dim, shards, timeout, threads, actor_options)
        self._start(spec=(kind, dim, dict(index_options)), source=None)

    # ------------------------------------------------------------------ set-up

    def _setup(self, kind, dim, shards, timeout, threads, actor_options) -> None:
        self._kind, self._dim, self._shards = kind, dim, shards
        self._timeout = _as_timeout(timeout, "timeout")
        self._threads = None if threads is None else as_int(threads, "threads", 1)
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options: expected a dict of Ray actor options, got {type(actor_options).__name__}")
        self._actor_options = dict(actor_options or {})
        self._lock = RWLock()
        self._shard_locks = [threading.Lock() for _ in range(shards)]
        self._next_id = 0
        self._checkpoint: Optional[Tuple[str, str]] = None  # (directory, save id) of the last save or load
        self._verify = True
        self._actors: list = []
        self._identity: List[Optional[tuple]] = [None] * shards
        self._expected = [0] * shards
        self._counts = [0] * shards
        self._trained = [True] * shards
        self._jumps: List[List[tuple]] = [[] for _ in range(shards)]  # (from version, size): accept_lost_writes
        self._storage = None
        self._schema: Dict[str, str] = {}
        self._closed = False

    def _start(self, spec: Optional[tuple], source: Optional[tuple]) -> None:
        ray = _ray()
        actor = _actor_class()
        if self._actor_options:
            actor = actor.options(**self._actor_options)
        self._actors = [actor.remote(s, spec, source, self._threads) for s in range(self._shards)]
        try:
            # Starting an actor (a worker process, a verified load) may take longer than a call's timeout.
            states = self._wait_states(max(self._timeout, DEFAULT_TIMEOUT))
            errors = {s: st.error for s, st in enumerate(states) if st.error is not None}
            if errors:
                s, error = min(errors.items())
                where = f"{source[0]}/shard_{s}" if source is not None else f"shard {s}"
                raise IndexFormatError(f"{where}: {error}")
            for s, st in enumerate(states):
                self._identity[s], self._expected[s] = st.identity, st.version
                self._counts[s], self._trained[s] = st.count, st.trained
            self._describe = ray.get([a.describe.remote() for a in self._actors],
                                     timeout=max(self._timeout, DEFAULT_TIMEOUT))
            self._describe_check(source)
        except BaseException:
            self.close()
            raise

    def _wait_states(self, timeout: float) -> List[_State]:
        ray = _ray()
        deadline = time.monotonic() + timeout
        states: Dict[int, _State] = {}
        while True:
            pending = [s for s in range(self._shards) if s not in states]
            refs = [self._actors[s].state.remote() for s in pending]
            try:
                for s, st in zip(pending, ray.get(refs, timeout=max(0.001, deadline - time.monotonic()))):
                    states[s] = st
                return [states[s] for s in range(self._shards)]
            except ray.exceptions.GetTimeoutError:
                raise ShardUnavailableError(
                    f"the shard actors did not start within {timeout:g} s; check the Ray cluster's free CPUs "
                    "(ray.available_resources()) or raise timeout=") from None
            except ray.exceptions.RayActorError:
                for s, ref in zip(pending, refs):  # keep the states that did come
                    try:
                        states[s] = ray.get(ref, timeout=0)
                    except Exception:
                        pass
                if time.monotonic() > deadline:
                    raise ShardUnavailableError(f"the shard actors did not start within {timeout:g} s") from None
                time.sleep(_RETRY_PAUSE)

    def _describe_check(self, source: Optional[tuple]) -> None:
        first = self._describe[0]
        for s, d in enumerate(self._describe):
            if d is None or d["kind"] != self._kind or d["dim"] != self._dim:
                where = f"{source[0]}/shard_{s}" if source is not None else f"shard {s}"
                raise IndexFormatError(f"{where}: holds {d!r}, the manifest says a {self._kind} index of dim {self._dim}")
        self._metric = first.get("metric", "ip")
        self._keep_float = first.get("keep_float", False)
        self._storage = first["storage"]

    # ------------------------------------------------------------------ properties

    dim = property(lambda self: self._dim, doc="Vector dimension.")
    shards = property(lambda self: self._shards, doc="Number of shards (an entry lives on shard id % shards).")
    kind = property(lambda self: self._kind, doc='"dense", "ivf" or "multivector": what each shard holds.')
    storage = property(lambda self: self._storage, doc="The shards' storage.")
    timeout = property(lambda self: self._timeout, doc="Seconds a call waits for an unavailable shard.")

    @property
    def metric(self) -> str:
        """The shards' metric ("maxsim" for a multivector index)."""
        return "maxsim" if self._kind == "multivector" else self._metric

    @property
    def keep_float(self) -> bool:
        return bool(self._keep_float)

    @property
    def schema(self) -> dict:
        """The attribute fields and their types, over every shard (``{"year": "int", ...}``)."""
        return dict(self._schema)

    @property
    def actors(self) -> list:
        """The shard actors' handles, shard 0 first (e.g. for ``ray.kill`` in a test)."""
        return list(self._actors)

    @property
    def is_trained(self) -> bool:
        return all(self._trained)

    def __len__(self) -> int:
        return int(sum(self._counts))

    def __repr__(self) -> str:
        return (f"ShardedIndex(dim={self._dim}, kind={self._kind!r}, shards={self._shards}, "
                f"storage={self._storage!r}, count={len(self)})")

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops the shard actors (what was not saved is gone)."""
        if self._actors:
            ray = _ray()
            for actor in self._actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:
                    pass
        self._closed = True

    # ------------------------------------------------------------------ calling the shards

    def _expect(self, s: int) -> tuple:
        return self._identity[s], self._expected[s]

    def _run(self, calls: Dict[int, tuple], timeout: float):
        """Runs ``calls`` ``{shard: (name, kwargs, *args)}`` on their shards; returns ``(values, missing,
        errors)``: the answers, the shards that could not answer as expected (shard -> (error class, reason)),
        and the index errors they raised (shard -> exception)."""
        if self._closed:
            raise RuntimeError("this ShardedIndex was closed; load it again (ShardedIndex.load)")
        ray = _ray()
        deadline = time.monotonic() + timeout
        values: Dict[int, Any] = {}
        missing: Dict[int, tuple] = {}
        errors: Dict[int, BaseException] = {}
        futures: Dict[int, Any] = {}

        def submit(s: int) -> None:
            name, kwargs, *args = calls[s]
            futures[s] = self._actors[s].call.remote(self._expect(s), name, kwargs, *args)

        for s in calls:
            submit(s)
        while futures:
            owner = {ref: s for s, ref in futures.items()}
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for s in futures:
                    missing[s] = (ShardUnavailableError, f"shard {s} did not answer within {timeout:g} s "
                                  "(its actor is busy or restarting)")
                break
            for ref in ready:
                s = owner[ref]
                del futures[s]
                try:
                    state, status, value = ray.get(ref)
                except ray.exceptions.ActorDiedError as exc:
                    missing[s] = (ShardUnavailableError, f"shard {s}'s actor is dead and will not restart "
                                  f"({str(exc).splitlines()[0]}); load the index again from its last save")
                    continue
                except ray.exceptions.RayActorError:
                    if time.monotonic() + _RETRY_PAUSE < deadline:  # restarting: ask again
                        time.sleep(_RETRY_PAUSE)
                        submit(s)
                    else:
                        missing[s] = (ShardUnavailableError, f"shard {s} was unavailable for {timeout:g} s "
                                      "(its actor is restarting)")
                    continue
                if status == _MISMATCH:
                    reason = self._resync(s, deadline)
                    if reason is None and time.monotonic() > deadline:
                        reason = (ShardUnavailableError, f"shard {s} kept changing for {timeout:g} s")
                    if reason is None:
                        submit(s)
                    else:
                        missing[s] = reason
                    continue
                self._expected[s], self._counts[s], self._trained[s] = state.version, state.count, state.trained
                if status == _OK:
                    values[s] = value
                else:
                    errors[s] = value
        return values, missing, errors

    def _resync(self, s: int, deadline: float) -> Optional[tuple]:
        """After a refused call: learns shard ``s``'s current state, moves a restarted shard to the last
        save, and says whether it holds what was acknowledged (None) or why not ``(error class, reason)``."""
        ray = _ray()
        actor = self._actors[s]
        with self._shard_locks[s]:
            try:
                state = ray.get(actor.state.remote(), timeout=max(0.001, deadline - time.monotonic()))
                if state.identity != self._identity[s]:  # Ray restarted the actor
                    if self._checkpoint is not None and state.origin != self._checkpoint:
                        path, save_id = self._checkpoint
                        state = ray.get(actor.restore.remote(state.identity, (path, True, self._verify), save_id),
                                        timeout=max(0.001, deadline - time.monotonic()))
                    self._identity[s] = state.identity
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                if time.monotonic() + _RETRY_PAUSE < deadline:
                    time.sleep(_RETRY_PAUSE)
                    return self._resync(s, deadline)
                return ShardUnavailableError, f"shard {s} was unavailable while it restarted"
            if state.error is not None:
                return ShardStaleError, (f"shard {s} restarted but could not load its last save "
                                         f"({state.error}); load the index again")
            if state.version != self._expected[s]:
                # Writes acknowledged after that version; accept_lost_writes' jumps count none.
                lost = self._expected[s] - state.version - sum(n for v, n in self._jumps[s] if v >= state.version)
                if lost == 0 and state.version < self._expected[s]:
                    # Only accept_lost_writes' jumps lie between: it holds what was acknowledged.
                    state = ray.get(actor.accept.remote(state.identity, self._expected[s]),
                                    timeout=max(0.001, deadline - time.monotonic()))
                    if state.version == self._expected[s]:
                        self._counts[s], self._trained[s] = state.count, state.trained
                        return None
                since = "its last save" if self._checkpoint is not None else "it was created (never saved)"
                what = (f"lost {lost} acknowledged write(s) made since {since}" if lost > 0
                        else f"holds {-lost} write(s) more than were acknowledged (a write that timed out)")
                return ShardStaleError, (
                    f"shard {s} restarted and {what}; call accept_lost_writes() to continue with what it holds "
                    "(then re-apply those writes), or load the last save again; search(allow_partial=True) "
                    "answers from the other shards meanwhile")
            self._counts[s], self._trained[s] = state.count, state.trained
            return None

    @staticmethod
    def _raise(missing: Dict[int, tuple], errors: Dict[int, BaseException], note: str = "") -> None:
        if errors:
            raise errors[min(errors)]
        if missing:
            stale = {s: r for s, (cls, r) in missing.items() if cls is ShardStaleError}
            cls = ShardStaleError if stale else ShardUnavailableError
            reasons = {s: r for s, (c, r) in missing.items()}
            raise cls("; ".join(reasons[s] for s in sorted(reasons)) + note, reasons)

    def _all(self, name: str, *args, kwargs: Optional[dict] = None, timeout: Optional[float] = None) -> Dict[int, Any]:
        calls = {s: (name, dict(kwargs or {}), *args) for s in range(self._shards)}
        values, missing, errors = self._run(calls, self._timeout if timeout is None else timeout)
        self._raise(missing, errors)
        return values

    def _timeout_of(self, timeout) -> float:
        return self._timeout if timeout is None else _as_timeout(timeout, "timeout")

    # ------------------------------------------------------------------ inputs

    def _route(self, ids: np.ndarray) -> Dict[int, np.ndarray]:
        """Positions into ``ids`` per shard (in the order given)."""
        owner = ids % self._shards
        return {s: np.flatnonzero(owner == s) for s in range(self._shards) if (owner == s).any()}

    def _vectors(self, vectors, name: str):
        """Checked input rows: float32 (n, dim) for dense/ivf, (tokens, offsets) for multivector."""
        if self._kind == "multivector":
            from .multivector import _offsets_of, _packed_docs

            tokens, lengths = _packed_docs(vectors, self._dim, name)
            return (tokens, _offsets_of(lengths)), lengths.size
        x = as_float_matrix(vectors, name, self._dim)
        return x, x.shape[0]

    def _take(self, rows, positions: np.ndarray):
        """The input rows at ``positions``, in the form the shard's ``add`` takes."""
        if self._kind != "multivector":
            return np.ascontiguousarray(rows[positions])
        tokens, offsets = rows
        lengths = np.diff(offsets)[positions]
        starts = offsets[positions]
        take = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
        return np.ascontiguousarray(tokens[take]), lengths

    def _attributes(self, attributes, n: int):
        """(the attributes as one dict per row or None, the schema after this write)."""
        if attributes is None:
            return None, self._schema
        parsed = AttributeStore.parse(attributes, n, "attributes", schema=self._schema)
        schema = dict(self._schema)
        for field, kind in parsed.schema.items():
            schema.setdefault(field, kind)
        return parsed, schema

    def _queries(self, queries):
        if self._kind == "multivector":
            from .multivector import parse_queries

            tokens, offsets = parse_queries(queries, self._dim)
            return (tokens, np.diff(offsets)), offsets.size - 1
        q = as_float_matrix(queries, "queries", self._dim)
        return q, q.shape[0]

    def _present(self, ids: np.ndarray, groups: Dict[int, np.ndarray], timeout: float) -> np.ndarray:
        """A bool mask over ``ids``: which are in the index (one read per shard, which also checks it)."""
        values = self._call_groups("present", groups, lambda pos: (ids[pos],), timeout)
        return np.isin(ids, np.concatenate([np.asarray(v, np.int64) for v in values.values()] or [np.empty(0, np.int64)]))

    def _call_groups(self, name: str, groups: Dict[int, np.ndarray], args_of, timeout: float, kwargs_of=None,
                     note: str = "", undo=None) -> Dict[int, Any]:
        calls = {s: (name, kwargs_of(s, pos) if kwargs_of else {}, *args_of(pos)) for s, pos in groups.items()}
        values, missing, errors = self._run(calls, timeout)
        if missing or errors:
            if undo is not None and values:
                undo(values)
            applied = sorted(values)
            if name in ("add", "upsert", "remove", "train") and applied:
                note = (f" (shards {applied} applied their part of this {name}" +
                        (", which was undone)" if undo is not None else "; the others did not)"))
            self._raise(missing, errors, note)
        return values

    def _ensure_ready(self, targets, timeout: float) -> None:
        """One read on each target shard: a stale or unavailable one refuses the write before any shard
        changes."""
        self._call_groups("state", {s: None for s in targets}, lambda pos: (), timeout)

    def _train_if_needed(self, x, n: int, timeout: float) -> None:
        if self._kind != "ivf" or all(self._trained):
            return
        ref = _ray().put(x)
        self._call_groups("train", {s: None for s in range(self._shards)}, lambda pos: (ref,), timeout)

    # ------------------------------------------------------------------ writing

    def add(self, vectors, ids=None, *, attributes=None, timeout: Optional[float] = None) -> np.ndarray:
        """Adds vectors (n, dim) (multivector: documents); returns their int64 ids.

        As the shards' ``add``: ``ids`` default to consecutive integers after
        the largest id so far; ids must be distinct, non-negative and new, or
        the call fails and adds nothing. Each entry goes to shard ``id %
        shards``. An untrained IVF index first trains every shard on these
        vectors (the same centroids everywhere).
        """
        timeout = self._timeout_of(timeout)
        rows, n = self._vectors(vectors, "vectors" if self._kind != "multivector" else "docs")
        with self._lock.write():
            given = ids is not None
            ids = as_ids(ids, "ids", n) if given else auto_ids(self._next_id, n)
            parsed, schema = self._attributes(attributes, n)
            if n == 0:
                return ids
            groups = self._route(ids)
            if given:
                first = np.zeros(n, dtype=bool)
                first[np.unique(ids, return_index=True)[1]] = True
                bad = np.flatnonzero(self._present(ids, groups, timeout) | ~first)
                if bad.size:
                    raise ValueError(
                        f"ids: id {int(ids[bad[0]])} is already in the index or repeated in this call; "
                        "ids must be unique (upsert replaces a vector by id)")
            else:
                self._ensure_ready(groups, timeout)
            self._train_if_needed(rows, n, timeout)

            def undo(done):
                try:
                    self._call_groups("remove", {s: groups[s] for s in done}, lambda pos: (ids[pos],), timeout)
                except Exception:
                    pass

            self._call_groups(
                "add", groups, lambda pos: (self._take(rows, pos),), timeout,
                kwargs_of=lambda s, pos: {"ids": ids[pos], "_schema": schema,
                                          "attributes": None if parsed is None else parsed.rows(pos)},
                undo=undo)
            self._schema = schema
            self._next_id = max(self._next_id, int(ids.max()) + 1)
            return ids

    def upsert(self, vectors, ids, *, attributes=None, timeout: Optional[float] = None) -> np.ndarray:
        """Adds or replaces entries by id (the new vector and attributes replace the old ones); returns
        the ids. Everything is checked before any shard changes."""
        timeout = self._timeout_of(timeout)
        rows, n = self._vectors(vectors, "vectors" if self._kind != "multivector" else "docs")
        ids = upsert_ids(ids, n)
        with self._lock.write():
            parsed, schema = self._attributes(attributes, n)
            if n == 0:
                return ids
            groups = self._route(ids)
            self._ensure_ready(groups, timeout)
            self._train_if_needed(rows, n, timeout)
            self._call_groups(
                "upsert", groups, lambda pos: (self._take(rows, pos),), timeout,
                kwargs_of=lambda s, pos: {"ids": ids[pos], "_schema": schema,
                                          "attributes": None if parsed is None else parsed.rows(pos)})
            self._schema = schema
            self._next_id = max(self._next_id, int(ids.max()) + 1)
            return ids

    def remove(self, ids, *, timeout: Optional[float] = None) -> int:
        """Removes entries by id; every id must be present (else a KeyError naming the unknown ones, and
        nothing is removed). Returns the number removed."""
        timeout = self._timeout_of(timeout)
        ids = removal_ids(ids)
        with self._lock.write():
            if ids.size == 0:
                return 0
            groups = self._route(ids)
            unknown = ids[~self._present(ids, groups, timeout)]
            if unknown.size:
                shown = ", ".join(str(int(i)) for i in unknown[:5])
                raise KeyError(f"ids: {unknown.size} id(s) not in the index ({shown}); nothing was removed")
            self._call_groups("remove", groups, lambda pos: (ids[pos],), timeout)
            return int(ids.size)

    def train(self, vectors, *, timeout: Optional[float] = None) -> None:
        """IVF only: trains every shard on ``vectors`` (the same centroids and codebooks everywhere)."""
        if self._kind != "ivf":
            raise ValueError(f"train: only an ivf ShardedIndex is trained, this one holds {self._kind} shards")
        timeout = self._timeout_of(timeout)
        x, _ = self._vectors(vectors, "vectors")
        with self._lock.write():
            ref = _ray().put(x)
            self._call_groups("train", {s: None for s in range(self._shards)}, lambda pos: (ref,), timeout)

    # ------------------------------------------------------------------ reading

    def search(self, queries, k: int = 10, *, filter=None, rerank: Optional[int] = None, nprobe: Optional[int] = None,
               query_weights=None, allow_partial: bool = False, timeout: Optional[float] = None) -> SearchResult:
        """The ``k`` best matches of each query over every shard: ``(scores, ids)``, float32 and int64 (q, k').

        ``k' = min(k, len(self))``; rows best first, ties by the smaller id,
        padded with id -1 and score -inf (+inf for l2) where fewer entries
        qualify. Each shard returns its own top-k, and the merge of those is
        the top-k of the whole: an exact index (dense f32, f16, int8, binary;
        multivector) answers exactly as one index holding every vector.

        ``filter`` (a dict predicate or an id allow-list) goes to every shard.
        ``rerank=R``: each shard re-ranks its own ``R`` best exactly (so at
        least the candidates one index would re-rank). ``nprobe``: IVF only;
        ``query_weights``: multivector only.

        A shard that is restarting is retried for up to ``timeout`` seconds
        (default: the index's). Then, or for a shard that lost acknowledged
        writes, a :class:`ShardUnavailableError` / :class:`ShardStaleError`
        naming it, unless ``allow_partial=True``: then the result holds what
        the other shards answered (still ``(q, k')``, padded), its
        ``missing`` attribute maps the absent shards to the reason, and a
        :class:`PartialResultWarning` says so.
        """
        k = as_k(k)
        allow_partial = as_bool(allow_partial, "allow_partial")
        timeout = self._timeout_of(timeout)
        kwargs: Dict[str, Any] = {}
        if rerank is not None:
            if self._kind == "multivector":
                raise ValueError("rerank: a multivector index scores exactly already (MaxSim); leave rerank=None")
            kwargs["rerank"] = as_rerank(rerank, k, self._keep_float)
        if nprobe is not None:
            if self._kind != "ivf":
                raise ValueError(f"nprobe: only for an ivf ShardedIndex, this one holds {self._kind} shards")
            kwargs["nprobe"] = as_int(nprobe, "nprobe", 1)
        if query_weights is not None:
            if self._kind != "multivector":
                raise ValueError(f"query_weights: only for a multivector ShardedIndex, this one holds {self._kind} shards")
            kwargs["query_weights"] = query_weights
        if filter is not None:
            kwargs["filter"] = filter
        q, nq = self._queries(queries)
        with self._lock.read():
            arg = q
            if _nbytes(q) > _PUT_BYTES and self._shards > 1:
                arg = _ray().put(q)
            calls = {s: ("search", kwargs, arg, k) for s in range(self._shards)}
            values, missing, errors = self._run(calls, timeout)
            if errors or (missing and not allow_partial):
                self._raise(missing, errors)
            width = min(k, len(self))
            parts = [values[s] for s in sorted(values)]
            scores, ids = merge_topk(parts, nq, width, self._kind != "multivector" and self._metric == "l2")
        reasons = {s: r for s, (_, r) in sorted(missing.items())}
        if reasons:
            warnings.warn(PartialResultWarning(
                f"search answered without shard(s) {sorted(reasons)}: " + "; ".join(reasons.values())), stacklevel=2)
        return SearchResult(scores, ids, reasons)

    def get(self, ids, *, vectors: bool = True, timeout: Optional[float] = None):
        """``(vectors, attributes)`` of present ids (else a KeyError naming the unknown ones), in the order
        asked: float32 (n, dim) (multivector: a list of (n_tokens, dim) arrays) and one dict per id;
        ``vectors=False`` returns ``(None, attributes)``."""
        vectors = as_bool(vectors, "vectors")
        timeout = self._timeout_of(timeout)
        flat = np.atleast_1d(np.asarray(ids))
        ids = as_ids(flat, "ids", flat.shape[0])
        with self._lock.read():
            groups = self._route(ids)
            values = self._call_groups("get", groups, lambda pos: (ids[pos], vectors), timeout)
        unknown = np.concatenate([np.asarray(v[2], np.int64) for v in values.values()] or [np.empty(0, np.int64)])
        if unknown.size:
            missing = ids[np.isin(ids, unknown)]
            shown = ", ".join(str(int(i)) for i in missing[:5])
            raise KeyError(f"ids: {missing.size} id(s) not in the index ({shown})")
        attributes: list = [None] * ids.size
        out: Any = None
        if vectors:
            out = [None] * ids.size if self._kind == "multivector" else np.empty((ids.size, self._dim), np.float32)
        for s, pos in groups.items():
            v, a, _ = values[s]
            for j, p in enumerate(pos.tolist()):
                attributes[p] = a[j]
                if vectors and self._kind == "multivector":
                    out[p] = v[j]
            if vectors and self._kind != "multivector":
                out[pos] = v
        return out, attributes

    def matches(self, filter, *, timeout: Optional[float] = None) -> np.ndarray:
        """The ids (int64; shard 0's first) that ``filter`` allows, as ``search(filter=)`` takes it."""
        with self._lock.read():
            values = self._all("matches", filter, timeout=timeout)
        return np.concatenate([np.asarray(values[s], np.int64) for s in sorted(values)])

    @property
    def ids(self) -> np.ndarray:
        """The stored ids (int64), shard by shard (shard 0's first, each in its storage order)."""
        with self._lock.read():
            values = self._all("ids")
        return np.concatenate([np.asarray(values[s], np.int64) for s in sorted(values)])

    @property
    def nbytes(self) -> int:
        """Bytes held by the shards' arrays, all together."""
        with self._lock.read():
            return int(sum(self._all("nbytes").values()))

    def __contains__(self, id_) -> bool:
        """True for an integer id that is present; any other object is not in the index."""
        key = lookup_id(id_)
        if key is None:
            return False
        with self._lock.read():
            s = key % self._shards
            values = self._call_groups("present", {s: None}, lambda pos: (np.array([key], np.int64),), self._timeout)
        return bool(np.asarray(values[s]).size)

    # ------------------------------------------------------------------ failures

    def status(self, *, timeout: float = 1.0) -> List[dict]:
        """One dict per shard: ``alive`` (answered within ``timeout``), ``version`` (writes it holds),
        ``expected`` (writes acknowledged), ``count``, ``stale`` (holds other than was acknowledged)."""
        ray = _ray()
        out = []
        refs = [a.state.remote() for a in self._actors]
        for s, ref in enumerate(refs):
            row = {"shard": s, "alive": False, "version": None, "expected": self._expected[s],
                   "count": self._counts[s], "stale": None, "error": None}
            try:
                st = ray.get(ref, timeout=timeout)
                row.update(alive=True, version=st.version, count=st.count, error=st.error,
                           stale=st.error is not None or st.version != self._expected[s]
                           or (st.identity != self._identity[s] and self._checkpoint is not None
                               and st.origin != self._checkpoint))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            out.append(row)
        return out

    def accept_lost_writes(self, shards=None, *, timeout: Optional[float] = None) -> Dict[int, int]:
        """Continues with what each stale shard now holds (its last save): later searches use it again.

        Returns ``{shard: writes lost}``. The lost writes are not replayed:
        re-apply them (``upsert`` is idempotent) if they matter.
        """
        ray = _ray()
        timeout = self._timeout_of(timeout)
        targets = range(self._shards) if shards is None else [as_int(s, "shards", 0, self._shards - 1) for s in shards]
        lost = {}
        with self._lock.write():
            deadline = time.monotonic() + timeout
            for s in targets:
                reason = self._resync(s, deadline)
                if reason is None:
                    continue
                if reason[0] is ShardUnavailableError:
                    raise ShardUnavailableError(reason[1], {s: reason[1]})
                state = ray.get(self._actors[s].state.remote(), timeout=max(0.001, deadline - time.monotonic()))
                if state.error is not None:
                    raise ShardStaleError(reason[1], {s: reason[1]})
                lost[s] = (self._expected[s] - state.version
                           - sum(n for v, n in self._jumps[s] if v >= state.version))  # < 0: more than acknowledged
                # A version above every one saved so far: an older save reloaded later is still detected.
                version = max(self._expected[s], state.version) + 1
                self._jumps[s].append((state.version, version - state.version))  # from what it holds
                state = ray.get(self._actors[s].accept.remote(state.identity, version),
                                timeout=max(0.001, deadline - time.monotonic()))
                self._identity[s], self._expected[s], self._counts[s] = state.identity, state.version, state.count
                self._trained[s] = state.trained
        return lost

    # ------------------------------------------------------------------ persistence

    def save(self, path, *, timeout: Optional[float] = None) -> None:
        """Writes a flatcoat directory of kind "sharded" atomically: each shard saved by its actor as child
        ``shard_<i>/`` (the actors must see ``path``: one machine or a shared file system), plus the
        shard count, kind, dim, next id and each shard's write count. A restarted shard reloads from here."""
        timeout = self._timeout_of(timeout)
        target = Path(os.fspath(path)).absolute()
        save_id = uuid.uuid4().hex
        with self._lock.write():
            meta = {
                "shards": self._shards, "kind": self._kind, "dim": self._dim, "next_id": self._next_id,
                "versions": list(self._expected), "counts": list(self._counts), "schema": dict(self._schema),
                "save_id": save_id, "index": _jsonable(self._describe[0]),
            }

            def fill(writer) -> None:
                self._save_children(writer.root, timeout)  # in parallel, each shard by its actor
                for s in range(self._shards):
                    writer.add_child(f"shard_{s}", lambda p: None)  # already written; checksummed here

            write_directory(target, _KIND, meta, fill)
            self._checkpoint = (str(target), save_id)

    def _save_children(self, root: Path, timeout: float) -> None:
        calls = {s: ("save", {}, str(root / f"shard_{s}")) for s in range(self._shards)}
        values, missing, errors = self._run(calls, timeout)
        self._raise(missing, errors, " (nothing was saved)")

    @classmethod
    def load(cls, path, *, mmap: bool = True, verify: bool = True, timeout: float = DEFAULT_TIMEOUT,
             threads: Optional[int] = None, actor_options: Optional[dict] = None) -> "ShardedIndex":
        """Opens a directory written by :meth:`save` (``flatcoat.load`` opens it too): one actor per
        shard, each loading its child (memory-mapped with ``mmap``, checksums verified with ``verify``)."""
        saved = read_directory(path, mmap=mmap, verify=verify)
        if saved.kind != _KIND:
            raise IndexFormatError(f"{saved.path}: holds a {saved.kind} index, not a sharded one; open it with flatcoat.load")
        return cls._open(saved, mmap=mmap, verify=verify, device="cpu", timeout=timeout, threads=threads,
                         actor_options=actor_options)

    @classmethod
    def _open(cls, saved: SavedDirectory, *, mmap: bool, verify: bool, device: str = "cpu",
              timeout: float = DEFAULT_TIMEOUT, threads: Optional[int] = None,
              actor_options: Optional[dict] = None) -> "ShardedIndex":
        if device != "cpu":
            raise ValueError(f"device: the shards of a sharded index search on their actors' CPUs; got {device!r}")
        root, meta = saved.path, saved.meta

        def need(ok: bool, reason: str) -> None:
            if not ok:
                raise IndexFormatError(f"{root}: {reason}")

        def integer(value, minimum: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        shards, kind, dim, next_id = (meta.get(k) for k in ("shards", "kind", "dim", "next_id"))
        versions, schema, save_id = meta.get("versions"), meta.get("schema", {}), meta.get("save_id")
        need(integer(shards, 1), f"invalid shard count {shards!r}")
        need(kind in INDEX_KINDS, f"unknown shard kind {kind!r}")
        need(integer(dim, 1) and integer(next_id, 0), f"invalid dim {dim!r} or next_id {next_id!r}")
        need(isinstance(versions, list) and len(versions) == shards and all(integer(v, 0) for v in versions),
             f"versions must list one write count per shard, got {versions!r}")
        need(isinstance(schema, dict) and all(isinstance(f, str) and isinstance(t, str) for f, t in schema.items()),
             "invalid schema")
        need(isinstance(save_id, str), "missing save_id")
        need(set(saved.children) == {f"shard_{s}" for s in range(shards)},
             f"child directories {sorted(saved.children)} do not match {shards} shards")
        self = cls.__new__(cls)
        self._setup(kind, dim, shards, timeout, threads, actor_options)
        self._verify = bool(verify)
        source = (str(Path(root).absolute()), bool(mmap), bool(verify))
        self._start(spec=None, source=source)
        self._checkpoint = (source[0], save_id)
        self._schema = dict(schema)
        self._next_id = next_id
        return self


def _as_timeout(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number of seconds, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive, finite number of seconds, got {value}")
    return value


def _nbytes(q) -> int:
    if isinstance(q, tuple):
        return sum(int(a.nbytes) for a in q)
    return int(q.nbytes)


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None), dict))}


register_opener(_KIND, ShardedIndex._open)
