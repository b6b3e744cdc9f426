"""A light HTTP/1.1 load generator: asyncio streams over keep-alive connections with requests
pre-serialized to bytes, so that on a 2-core machine the client takes little CPU from the server
it measures (its own CPU time is reported beside the results)."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import numpy as np


def raw_request(path: str, body: bytes, content_type: str, host: str = "127.0.0.1") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)  # answered 200
    refused_ms: list[float] = field(default_factory=list)  # any other status
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "concurrency": self.concurrency, "seconds": self.seconds,
            "requests": len(self.latencies_ms), "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "requests_per_s": len(self.latencies_ms) / self.seconds,  # successful ones
            "error_p50_ms": float(np.median(self.refused_ms)) if self.refused_ms else None,
            "p50_ms": float(np.percentile(lat, 50)),  # percentiles of the 200s
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else None,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_share_of_2_cores": self.client_cpu_s / (2 * self.seconds),
        }


async def run_load(host: str, port: int, requests: list[bytes], concurrency: int,
                   seconds: float) -> LoadResult:
    """`concurrency` clients, each sending back to back on its own connection for `seconds`."""
    result = LoadResult(concurrency, seconds)
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        conn = await Connection.open(host, port)
        n = k
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status, _ = await conn.send(requests[n % len(requests)])
                ms = (time.perf_counter() - t0) * 1000
                (result.latencies_ms if status == 200 else result.refused_ms).append(ms)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.errors += status != 200
                n += concurrency
        finally:
            conn.close()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    result.client_cpu_s = time.process_time() - cpu0
    return result


async def sequential(host: str, port: int, requests: list[bytes], n: int) -> list[float]:
    """n requests one after another on one connection: per-request latency in ms."""
    conn = await Connection.open(host, port)
    out = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            status, body = await conn.send(requests[i % len(requests)])
            out.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                raise RuntimeError(f"status {status}: {body[:300]!r}")
    finally:
        conn.close()
    return out
