"""uvicorn's HTTP protocol with a lingering close, as nginx does it (`lingering_close`).

Refusing a body that is still arriving means closing the connection, or the server reads the
whole body to keep the connection usable. But closing a socket with unread bytes in it sends a
reset, and a reset makes the client's kernel drop the answer it had not yet read: the client
sees "connection reset by peer" instead of the 503. So a close first sends the answer and a FIN
(`write_eof`), then drops what still arrives, unread, until the client closes its side (it
does, having read the answer with `Connection: close`) or LINGER_S pass.

`simclr-embed serve` runs uvicorn with this protocol; the Gate closes only on connections that
run it (the `simclr_embed.linger` scope extension), and leaves other connections open.
"""

from __future__ import annotations

import asyncio
import os
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_S = 2.0
EXTENSION = "simclr_embed.linger"
_SCRATCH = bytearray(1 << 20)  # MSG_TRUNC writes nothing here; where it would, no one reads


class _LingeringTransport:
    """The transport uvicorn's cycle sees: close() lingers, everything else is the socket's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t, self._loop, self._closing = transport, loop, False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        t = self._t
        if t.is_closing() or not t.can_write_eof():
            t.close()
            return
        t.write_eof()  # the answer goes out, then a FIN
        t.pause_reading()  # what still arrives is dropped in the kernel, below
        Drain(t, self._loop)

    def is_closing(self) -> bool:
        return self._closing or self._t.is_closing()

    def __getattr__(self, name: str):
        return getattr(self._t, name)


class Drain:
    """Drops what arrives on a closing connection until the client closes or LINGER_S pass.
    `recv(MSG_TRUNC)` on a TCP socket discards in the kernel (Linux): no copy to user space,
    no bytes object, no trip through the HTTP parser, which a refused 1 MB body would
    otherwise cost the event loop (docs/benchmarks.md, "Overload"). It reads a duplicate of
    the socket's descriptor, as the event loop allows one reader per descriptor."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.t, self.loop = transport, loop
        self.sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._read)
        self.timer = loop.call_later(LINGER_S, self._close)

    def _read(self) -> None:
        try:
            if self.sock.recv_into(_SCRATCH, len(_SCRATCH), socket.MSG_TRUNC):
                return
        except BlockingIOError:
            return
        except OSError:
            pass  # a reset: nothing left to linger for
        self.timer.cancel()
        self._close()

    def _close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.t.close()


class LingeringHttp(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()  # a fresh scope per request
        self.scope.setdefault("extensions", {})[EXTENSION] = {}  # the Gate may close


# How `simclr-embed serve` (and benchmarks.servers.variant_server) run uvicorn: this protocol, up to
# 20 s for requests in flight at SIGTERM, no access log.
UVICORN_OPTIONS = {"http": LingeringHttp, "timeout_graceful_shutdown": 20, "access_log": False}
