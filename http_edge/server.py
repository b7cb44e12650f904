"""How a node's HTTP server runs: the options ``sayit serve`` gives aiohttp's runner.

- ``handler_cancellation``: a handler is cancelled when its client hangs up, so that an event
  stream, or an OpenAI route waiting for its job, lets its Redis connection go at once and an
  upload stops reading (its temp file is removed). The tests' server (aiohttp's ``TestServer``)
  always runs so, so the tests see the server production runs.
- ``keepalive_timeout``: aiohttp's one bound on a request's head. Its timer starts when a
  connection opens (and again after each response) and closes a connection that has not sent a
  whole request head by then, however slowly it drips; aiohttp's parser bounds the head's size
  (lines of 8190 bytes, 128 headers). A body is bounded by ``SAYIT_UPLOAD_IDLE_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import http_exceptions

KEEPALIVE_TIMEOUT_S = 75.0  # aiohttp's own default: longer than common load balancers' idle timeout (60 s)


def server_options() -> dict[str, Any]:
    return {"handler_cancellation": True, "keepalive_timeout": KEEPALIVE_TIMEOUT_S}


class ShortProtocolErrors(logging.Filter):
    """A request aiohttp's parser refuses is logged in one short line, not with the bytes it carried.

    aiohttp logs such a request with a traceback whose message repeats the data after the fault
    (a whole body, for a wrong Content-Length): a client could fill the log with its uploads.
    """

    MAX_CHARS = 200

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, http_exceptions.HttpProcessingError):
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            record.msg, record.args = "refused a malformed request: %s", (first[: self.MAX_CHARS],)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_protocol_errors() -> None:
    logging.getLogger("aiohttp.server").addFilter(ShortProtocolErrors())
