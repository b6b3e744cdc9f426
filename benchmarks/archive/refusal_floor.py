"""The floor under a refusal: how fast can any server on this host refuse 200 clients that each
send a 1 MB PNG? The same hey load (benchmarks/overload.py) against servers that do nothing but
refuse, and against the service, in interleaved rounds:

- nginx (Debian) answering every request with a constant 503: C, one worker, its own lingering
  close; skipped with a note where nginx is not installed;
- the cheapest Python server: uvloop, a constant 503 once the headers are in, then the body
  dropped either by reading it (`reads`) or in the kernel (`drops`, MSG_TRUNC, as
  service/protocol.py does);
- the service (`simclr-embed serve`), which answers some requests and refuses the rest, and
  `service_refusing`, the same with a 1 KB byte budget, so that it answers almost none: its
  refusal path alone.

Reports refusal latency (p50/p95/p99 of the 503s as hey sees them) per server and round, their
medians, and failed requests (connection resets).

    python -m benchmarks.refusal_floor --bundle bundles/default --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from simclr_embed.benchmarks.harness import hardware, hey, percentiles, write_result
from simclr_embed.benchmarks.overload import megabyte_png
from simclr_embed.benchmarks.process import ServiceProcess, free_port
from simclr_embed.service.protocol import Drain

log = logging.getLogger("refusal_floor")

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
           b"retry-after: 1\r\nconnection: close\r\ncontent-length: 24\r\n\r\n"
           b'{"error":"overloaded"}\r\n')
NGINX_CONF = """worker_processes 1;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  server {{
    listen 127.0.0.1:{port} backlog=2048;
    client_max_body_size 20m;
    location / {{ return 503 '{{"error":"overloaded"}}'; }}
  }}
}}
"""


# --- the cheapest Python server ----------------------------------------------------------
class _Refuse(asyncio.Protocol):
    """A 503 as soon as the headers are in, a FIN, then the rest of the body dropped."""

    drop_in_kernel = True

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.t, self.head, self.answered = transport, b"", False

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # `reads`: the body comes through the loop and is dropped here
        self.head += data[:8192]
        if b"\r\n\r\n" not in self.head:
            return
        self.answered = True
        self.t.write(REFUSAL)
        self.t.write_eof()
        if self.drop_in_kernel:  # as the service's lingering close does
            self.t.pause_reading()
            Drain(self.t, asyncio.get_running_loop())

    def eof_received(self) -> None:
        self.t.close()


def serve_floor(port: int, drop_in_kernel: bool) -> None:
    import uvloop

    _Refuse.drop_in_kernel = drop_in_kernel

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Refuse, "127.0.0.1", port, backlog=2048)
        await server.serve_forever()

    uvloop.run(main())


# --- the servers under test --------------------------------------------------------------
def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(kind: str, tmp: Path, bundle: Path) -> tuple[str, object]:
    """(the URL to load, a handle to stop it by)."""
    if kind.startswith("service"):  # service_refusing: a 1 KB byte budget, all but one refused
        env = {"SIMCLR_EMBED_MAX_INFLIGHT_BYTES": "1024"} if kind == "service_refusing" else {}
        srv = ServiceProcess(bundle, tmp / "data", tmp / "server.log", **env).start()
        return srv.url + "/v1/embed", srv
    port = free_port()
    if kind == "nginx":
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
        cmd = [shutil.which("nginx") or "nginx", "-e", str(tmp / "error.log"), "-c", str(conf),
               "-g", "daemon off;"]
    else:
        cmd = [sys.executable, "-m", "simclr_embed.benchmarks.archive.refusal_floor",
               "--serve-floor", str(port), *(["--read-bodies"] if kind == "python_reads" else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return f"http://127.0.0.1:{port}/v1/embed", proc


def nginx_version() -> str | None:
    exe = shutil.which("nginx")
    if exe is None:
        return None
    return subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()


def stop(handle: object) -> None:
    if isinstance(handle, ServiceProcess):
        handle.stop()
    else:
        assert isinstance(handle, subprocess.Popen)
        handle.terminate()
        handle.wait(10)


def one_run(kind: str, bundle: Path, body: Path, clients: int, seconds: int,
            rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url, handle = start(kind, Path(tmp), bundle)
        try:
            timed = hey(url, clients // 2, seconds, body, rate)
            counted = hey(url, clients // 2, seconds, body, rate, summary=True)
            answers, failures = timed.result(), counted.result()
        finally:
            stop(handle)
    return {"server": kind, "requests": answers["requests"],
            "refused": percentiles(timed.latencies(503)),
            "answered_200": len(timed.latencies(200)),
            "failed": failures["failed"], "failed_by_error": failures["errors"]}


def medians(runs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for kind in dict.fromkeys(r["server"] for r in runs):
        mine = [r for r in runs if r["server"] == kind and r["refused"]["n"]]
        out[kind] = {k: float(np.median([r["refused"][k] for r in mine]))
                     for k in ("p50_ms", "p95_ms", "p99_ms")}
        out[kind]["failed"] = sum(r["failed"] for r in runs if r["server"] == kind)
    return out


def markdown(result: dict) -> str:
    lines = ["| server | refusal p50 (ms) | p95 (ms) | p99 (ms) | failed (resets), all rounds |",
             "| --- | --- | --- | --- | --- |"]
    for kind, m in result["medians"].items():
        lines.append(f"| {kind} | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} | {m['p99_ms']:.1f} | "
                     f"{m['failed']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rate", type=float, default=1.0, help="requests/s per client (open loop)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/overload"))
    p.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--read-bodies", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_floor:
        return serve_floor(args.serve_floor, drop_in_kernel=not args.read_bodies)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    kinds = ["nginx"] if shutil.which("nginx") else []
    if not kinds:
        log.warning("nginx is not installed (apt-get install nginx): its row is left out")
    kinds += ["python_drops", "python_reads", "service_refusing", "service"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "big.png"
        body.write_bytes(megabyte_png(args.data))
        size = body.stat().st_size
        for round_ in range(args.rounds):
            for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                runs.append(one_run(kind, args.bundle, body, args.clients, args.seconds,
                                    args.rate))
                log.info("round %d %s: %s", round_, kind, runs[-1]["refused"])
    result = {"benchmark": "refusal_floor", "hardware": hardware(), "bundle": args.bundle.name,
              "clients": args.clients, "seconds": args.seconds, "rate_per_client": args.rate,
              "body_bytes": size, "nginx": nginx_version(),
              "rounds": args.rounds, "runs": runs, "medians": medians(runs)}
    write_result(args.out / "refusal_floor.json", result)
    (args.out / "refusal_floor.md").write_text(markdown(result))
    log.info("\n%s", markdown(result))


if __name__ == "__main__":
    main()
