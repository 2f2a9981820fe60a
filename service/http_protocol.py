"""uvicorn's httptools protocol with the limit on a request's head that h11 has.

uvicorn parses HTTP with httptools (llhttp, in C) when it is installed and with h11 (pure
Python) otherwise. On two cores shared with the load generator, h11 is what the event loops
spend much of their CPU on outside the model, and that CPU is what refusals and the soak's
latency need. But uvicorn's httptools protocol has no limit on a request's head: a 1 MB
header is buffered, parsed and answered 200, where h11 stops at 16 KiB. This subclass counts
the head's bytes as they arrive and answers 431 (Request Header Fields Too Large) and closes
the connection once they pass h11's limit, so the server's memory per connection stays
bounded whichever parser runs.

BentoML builds its uvicorn `Config` itself with `http="auto"`, which uvicorn resolves when the
worker starts serving by importing `uvicorn.protocols.http.auto.AutoHTTPProtocol`; `install`,
called when the service module is imported (before that), points that name at this class.
`SMALLCLS_HTTP_PARSER=h11` keeps h11 (to compare, or where httptools cannot be installed).
"""

from __future__ import annotations

import logging
import os

from service.settings import ENV_HTTP_PARSER

logger = logging.getLogger(__name__)

PARSERS = ("httptools", "h11")
# h11's default limit on an incomplete event (a request line and headers): 16 KiB.
MAX_HEAD_BYTES = 16 * 1024

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # uvicorn falls back to h11 by itself
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head past the limit."""


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """Counts the bytes received while a request's head is incomplete (request line
        and headers, before the blank line); past MAX_HEAD_BYTES: 431 and close."""

        max_head_bytes = MAX_HEAD_BYTES

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            self._reading_head = True  # the next bytes start a request
            self._head_bytes = 0
            self._head_too_large = False
            self._head_refused = False

        def data_received(self, data: bytes) -> None:
            if self._head_refused:
                return
            if self._reading_head:
                self._head_bytes += len(data)
            # Parsing first, then the count: a head that completes within the limit in this
            # chunk is served even if the chunk also carries its body.
            super().data_received(data)
            if self._reading_head and self._head_bytes > self.max_head_bytes:
                self._refuse_head()

        def on_headers_complete(self) -> None:
            self._reading_head = False
            # The raw count may include body bytes that came with the head's end: the head's
            # own size, from what the parser kept, decides here.
            head = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if head > self.max_head_bytes:
                self._head_too_large = True
                raise HeadTooLarge  # stops the parser; answered in send_400_response
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._reading_head = True
            self._head_bytes = 0

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers every parser error (a callback's exception included) with 400.
            if self._head_too_large:
                self._refuse_head()
            else:
                super().send_400_response(msg)

        def _refuse_head(self) -> None:
            if self._head_refused or self.transport.is_closing():
                return
            self._head_refused = True
            msg = f"request head larger than {self.max_head_bytes} bytes"
            logger.info("refused a request head of %d bytes or more", self._head_bytes)
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[431],
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: %d\r\n" % len(msg),
                        b"connection: close\r\n\r\n",
                        msg.encode("ascii"),
                    ]
                )
            )
            self.transport.close()


def chosen_parser(env: dict[str, str] | None = None) -> str:
    """The parser a worker serves with: httptools where installed, unless the setting says
    h11."""
    value = (os.environ if env is None else env).get(ENV_HTTP_PARSER, "").strip().lower()
    if value and value not in PARSERS:
        raise ValueError(f"{ENV_HTTP_PARSER} must be one of {PARSERS}, got {value!r}")
    if value == "h11" or HttpToolsProtocol is None:
        return "h11"
    return "httptools"


def install(env: dict[str, str] | None = None) -> str:
    """Point uvicorn's "auto" protocol at the parser chosen; returns its name."""
    import uvicorn.protocols.http.auto as auto

    parser = chosen_parser(env)
    if parser == "httptools":
        auto.AutoHTTPProtocol = BoundedHttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        auto.AutoHTTPProtocol = H11Protocol
    return parser
