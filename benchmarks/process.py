"""Run the service as a child process and wait until it is ready: for scripts, benchmarks and
the tests, which all need a real server on a real port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """`simclr-embed serve` in a subprocess on 127.0.0.1:<free port>, configured through
    SIMCLR_EMBED_* variables; its output goes to `log_path`."""

    def __init__(self, bundle: Path, data_dir: Path, log_path: Path,
                 module: str = "simclr_embed.cli serve", **env: str) -> None:
        self.bundle, self.data_dir, self.log_path, self.env = bundle, data_dir, log_path, env
        self.module = module  # `python -m` this: the service, or a baseline server
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90) -> ServiceProcess:
        env = {**os.environ, "SIMCLR_EMBED_BUNDLE": str(self.bundle),
               "SIMCLR_EMBED_DATA_DIR": str(self.data_dir), "SIMCLR_EMBED_HOST": "127.0.0.1",
               "SIMCLR_EMBED_PORT": str(self.port), **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.module.split()],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: see "
                                   f"{self.log_path}\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.01)  # restart times are read off this poll: it sets their resolution
        self.stop(signal.SIGKILL)
        raise TimeoutError(f"server not ready after {timeout} s: see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Signal the server, wait for it to exit, and return its log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        return self.log_path.read_text()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far of the server's event-loop threads (each process's main thread) and
        of all its other threads (model, decode), over the process and its worker children."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {"loop": 0.0, "other": 0.0}
        for pid in [self.pid, *_children(self.pid)]:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                except FileNotFoundError:  # a thread that just ended
                    continue
                fields = stat[stat.rindex(")") + 2 :].split()
                used = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
                out["loop" if tid == str(pid) else "other"] += used
        return out


def _children(pid: int) -> list[int]:
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            kids = [int(k) for k in f.read().split()]
        found += [k for kid in kids for k in (kid, *_children(kid))]
    return found
