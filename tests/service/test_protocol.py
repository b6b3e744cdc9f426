"""The lingering close (service/protocol.py) over a real socket against a real server: a body
refused before it is read is dropped as it arrives, the client that writes all of it before
reading (as Python's HTTP clients do) still gets the whole 503, and the connection's file
descriptors are released once the client closes."""

from __future__ import annotations

import os
import socket
import time

from tests.service.test_admission import open_body
from tests.support.servers import Server, wait_for_metric

BODY = 4 * 2**20  # more than loopback's socket buffers hold: unread, sendall would block


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_refused_body_is_dropped_and_the_whole_503_arrives(bundle_dir, tmp_path):
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_MAX_INFLIGHT_BYTES="1024",
                 SIMCLR_EMBED_BODY_TIMEOUT_S="60").start()
    held = open_body(srv.port, 5000)  # one body in the budget: the next must fit beside it
    try:
        wait_for_metric(srv.url, "simclr_embed_body_bytes", lambda v: v >= 1)
        baseline = open_fds(srv.pid)
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        s.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
                  b"content-length: %d\r\n\r\n" % BODY)
        s.sendall(b"\0" * BODY)  # blocks for good unless the server drops what arrives
        answer = b""
        while chunk := s.recv(65536):  # to the server's FIN
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"connection: close" in head.lower()
        assert b"retry-after: 1" in head.lower() and b'"overloaded"' in body
        s.close()
        deadline = time.monotonic() + 10  # bounds a leak; nothing rests on how soon
        while open_fds(srv.pid) > baseline:
            assert time.monotonic() < deadline, "the refused connection's fds stay open"
            time.sleep(0.01)
    finally:
        held.close()
        srv.stop()
