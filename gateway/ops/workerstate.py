"""What ``serve``'s supervisor knows of its workers, in a file its HTTP workers read.

The supervisor is the only process that sees a worker die and come back; ``/readyz`` and
``/metrics`` are answered by the HTTP workers. So the supervisor writes this JSON (whole, by
rename) at every change to the file ``OMS_WORKER_STATE`` names, and the HTTP workers read it
when asked. Outside ``serve`` there is no file and nothing to report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

ENV = "OMS_WORKER_STATE"


def write(path: Path, workers: dict[str, dict[str, Any]]) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps({"workers": workers}))
    os.replace(partial, path)


def read() -> dict[str, dict[str, Any]] | None:
    """Per role: ``expected``, ``running``, ``restarts``, ``restarting``, ``last_exit``; None outside serve."""
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        return orjson.loads(Path(path).read_bytes())["workers"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None


def degraded(workers: dict[str, dict[str, Any]] | None) -> list[str]:
    """Roles with fewer workers running than expected (one is waiting to be restarted)."""
    return sorted(role for role, w in (workers or {}).items() if w["running"] < w["expected"])
