"""Logs of the long-running commands (exchange, terminal): readable text or JSON lines.

``--log-format json`` writes one JSON object per line on stderr::

    {"ts": "2026-12-01T20:14:03.512Z", "level": "warning", "event": "auth_failed",
     "logger": "hotline.exchange", "message": "authentication failed from ...",
     "component": "exchange", "source": "10.0.0.7", "reason": "bad_signature"}

``ts`` is RFC 3339 in UTC with milliseconds; ``event`` is a stable name (the list is in
``docs/operations.md``; a line without one says ``"log"``); the event's fields follow as
top-level keys, never overriding the fixed ones. Security events (refusals, failed
authentications, pin mismatches, duplicate terminals) are logged at WARNING or above.
A log line never holds a key, a passphrase, a TURN secret or media.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

#: the key under which a record carries its event name and fields (``extra=event(...)``)
_EVENT = "hotline_event"
_FIELDS = "hotline_fields"
_FIXED = ("ts", "level", "event", "logger", "message")
#: the start and stop lines: always written, whatever the level (down to warning)
LIFECYCLE = "hotline.lifecycle"


def event(name: str, /, **fields: object) -> dict[str, Any]:
    """``extra=`` for a logging call: ``log.warning("...", extra=event("refused", reason=r))``."""
    return {_EVENT: name, _FIELDS: fields}


def rfc3339(created: float) -> str:
    """``2026-12-01T20:14:03.512Z``: RFC 3339, UTC, milliseconds."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, static: dict[str, object] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, _EVENT, "log"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in self.static.items():
            doc.setdefault(key, value)
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if key not in _FIXED and value is not None:
                    doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """``2026-12-01T20:14:03.512Z WARNING hotline.exchange: message`` (UTC)."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = f"{prefix} " if prefix else ""

    def format(self, record: logging.LogRecord) -> str:
        text = (
            f"{rfc3339(record.created)} {self.prefix}{record.levelname} {record.name}: "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(
    fmt: str,
    level: str,
    *,
    static: dict[str, object] | None = None,
    prefix: str = "",
    stream: TextIO | None = None,
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as ``fmt``
    (``text`` or ``json``); ``static`` fields go into every JSON line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(static) if fmt == "json" else TextFormatter(prefix))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger(LIFECYCLE).setLevel(min(logging.INFO, root.level))


def lifecycle(name: str, message: str, **fields: object) -> None:
    """A start or stop line (``terminal_started``, ``exchange_stopped``...)."""
    logging.getLogger(LIFECYCLE).info(message, extra=event(name, **fields))
