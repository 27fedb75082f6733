"""Log lines as text for people or as one JSON object per line for log collectors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from gitmesh.sync.git import redact

# Context the controller passes with ``extra=``; a JSON line carries each one that is set.
FIELDS = ("source", "revision", "result", "duration")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {k: getattr(record, k) for k in FIELDS if hasattr(record, k)}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


class Redacted(logging.Formatter):
    """Another formatter's lines with the credentials of every URL in them hidden, whoever wrote the
    message (a rollout webhook or Prometheus URL may carry them too)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def setup(fmt: str) -> None:
    """``text`` or ``json``, on stderr, at INFO."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(Redacted(JsonFormatter()))
    else:
        handler.setFormatter(Redacted(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per scheduled run
