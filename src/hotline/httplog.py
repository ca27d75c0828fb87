"""What our HTTP servers (the exchange, a terminal's control API) log about malformed HTTP.

aiohttp logs every request it cannot parse (a 100 KB header line, a bad Content-Length) at
ERROR with a traceback, and so does an exception a handler lets escape. Anyone who can
reach the port could fill the log that way. :class:`HttpErrorLog` is handed to aiohttp as
its server logger: a malformed request becomes one counted WARNING line, at most one per
reason per :data:`LOG_INTERVAL_S` (the others are counted and summed into the next line);
any other exception is still logged in full, as the bug it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from aiohttp import http_exceptions, web_exceptions

from hotline.logs import event

#: at most one log line per reason in this many seconds
LOG_INTERVAL_S = 1.0
#: longest message text of the peer's making that reaches a log line
MAX_DETAIL = 80


def bad_http_reason(exc: BaseException) -> str | None:
    """The reason a request is malformed (a fixed set), or None if ``exc`` is no such thing."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return "header_too_large"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "bad_method"
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return "bad_request"
    if isinstance(exc, web_exceptions.HTTPClientError):
        return "bad_request"
    return None


class HttpErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger for one of our servers: see the module docstring.

    ``count(reason)`` is called for every malformed request (metrics, status)."""

    def __init__(
        self,
        logger: logging.Logger,
        count: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, {})
        self._count = count
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs

    def malformed(self, source: object, reason: str, detail: str) -> None:
        """Count a malformed request and log it in one line (rate-limited per reason)."""
        self._count(reason)
        now = self._clock()
        if now - self._last.get(reason, -LOG_INTERVAL_S) < LOG_INTERVAL_S:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        more = self._suppressed.pop(reason, 0)
        lines = detail.splitlines() or [""]
        self.logger.warning(
            "malformed HTTP request from %s refused (%s): %r%s",
            source,
            reason,
            lines[0][:MAX_DETAIL],
            f" (and {more} more since the last line)" if more else "",
            extra=event("bad_http_request", source=str(source), reason=reason, suppressed=more),
        )

    def _malformed(self, exc: BaseException, reason: str, args: tuple[Any, ...]) -> None:
        detail = str(getattr(exc, "message", "") or type(exc).__name__)
        self.malformed(args[0] if args else "?", reason, detail)

    def _route(self, level: int, msg: Any, args: tuple[Any, ...], kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        reason = bad_http_reason(exc) if isinstance(exc, BaseException) else None
        if reason is not None:
            self._malformed(exc, reason, args)
            return
        self.logger.log(level, msg, *args, **kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._route(logging.ERROR, msg, args, kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._route(logging.ERROR, msg, args, kwargs)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._route(logging.DEBUG, msg, args, kwargs)
