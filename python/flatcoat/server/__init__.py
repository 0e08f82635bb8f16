"""``flatcoat serve``: one index or Retriever over HTTP/JSON (FastAPI + uvicorn), with dynamic
micro-batching of concurrent searches and durable writes (a write-ahead log fsynced before each
answer, folded into atomic snapshots). Needs the ``serve`` extra: ``pip install 'flatcoat[serve]'``.

- :mod:`flatcoat.server.app`: the routes, :class:`Service`, :func:`create_app`, :func:`run`;
- :mod:`flatcoat.server.batching`: :class:`MicroBatcher`;
- :mod:`flatcoat.server.wal`: :class:`WriteAheadLog` and its record format.

See docs/serving.md.
"""

from __future__ import annotations

from .app import ApiError, ServeConfig, Service, create_app, is_loopback, run, wal_dir_for
from .batching import MicroBatcher, params_key
from .wal import Record, WALCorruptError, WriteAheadLog

__all__ = ["ServeConfig", "Service", "ApiError", "create_app", "run", "is_loopback", "wal_dir_for", "MicroBatcher",
           "params_key", "WriteAheadLog", "Record", "WALCorruptError"]
