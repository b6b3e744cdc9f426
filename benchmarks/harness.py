"""The one harness the benchmarks run on: what every result carries (the machine, the versions),
one latency summary, and the two load generators, each started and read one way into one result
schema. wrk drives a closed loop (each connection sends again on the answer); hey drives an open
loop (`qps` per client) and lists every answered request with its start, latency and status.

A load's result: tool, clients, wall_s, requests (answered), ok (2xx), non2xx, failed (no
answer: resets, timeouts), requests_per_s (2xx answers per second of wall time, for both
tools), the percentiles of its 2xx answers' latencies (n, p50/p95/p99/max in ms),
status_counts (hey), and the generator's own CPU (tool_cpu_s, tool_cpu_share_of_cores), which
says whether the client was the limit."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

import numpy as np

from simclr_embed import configure_logging

PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "numpy")
WRK_SCRIPT = Path(__file__).with_name("wrk") / "post_file.lua"


QUICK_HELP = ("a small run that shows the measurement works (the suite smoke-tests it); written "
              "under benchmarks/results/quick/ unless --out says otherwise")


def _add_part(p: argparse.ArgumentParser, part: ModuleType, quick: bool) -> None:
    """The part's own options, and --quick: its QUICK defaults, which options given still beat."""
    part.arguments(p)
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    if quick:
        p.set_defaults(**getattr(part, "QUICK", {}))


def measurements(doc: str, parts: Mapping[str, ModuleType], argv: list[str] | None = None) -> None:
    """An entry point over several measurements, `python -m benchmarks.ENTRY NAME [options]`:
    each part is a module with `arguments(parser)` and `run(args)`, and QUICK, the defaults of
    its --quick run."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="measurement", required=True, metavar="MEASUREMENT")
    for name, part in parts.items():
        doc_of = part.__doc__ or ""
        _add_part(sub.add_parser(name, help=doc_of.split("\n\n")[0].replace("%", "%%"),
                                 description=doc_of,
                                 formatter_class=argparse.RawDescriptionHelpFormatter),
                  part, "--quick" in argv)
    args = p.parse_args(argv)
    configure_logging()
    parts[args.measurement].run(args)


def measurement(doc: str, part: ModuleType, argv: list[str] | None = None) -> None:
    """An entry point of one measurement, `python -m benchmarks.ENTRY [options]`."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_part(p, part, "--quick" in argv)
    args = p.parse_args(argv)
    configure_logging()
    part.run(args)


def hardware() -> dict:
    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx")))
                break
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    versions = {}
    for p in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions[p] = version(p)
    info["versions"] = versions
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True,
                                        capture_output=True, text=True).stdout.strip()
    return info


def write_result(path: str | Path, result: dict) -> Path:
    """The benchmark's JSON, with its parent folder made; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def percentiles(ms: Sequence[float] | np.ndarray) -> dict:
    """n, p50/p95/p99 and max of latencies in milliseconds (only n when there are none)."""
    a = np.asarray(ms, float)
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "max_ms": float(a.max())}


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise SystemExit(f"{name} is not installed: apt-get install {name} (Debian)")
    return exe


@dataclass
class Load:
    """A load generator that is running; `result()` waits for it and reads what it printed."""

    proc: subprocess.Popen
    tool: str
    clients: int
    t0: float = field(default_factory=time.perf_counter)
    rows: list[tuple[float, float, int]] = field(default_factory=list)  # start s, ms, status

    def running(self) -> bool:
        """Whether it still runs; it is not reaped here, so that result() gets its rusage."""
        return os.waitid(os.P_PID, self.proc.pid,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def result(self) -> dict:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        _, _, usage = os.wait4(self.proc.pid, 0)  # the rusage of the load generator alone
        self.proc.returncode = 0
        wall, cpu = time.perf_counter() - self.t0, usage.ru_utime + usage.ru_stime
        read = {"wrk": self._wrk, "hey": self._hey, "hey-summary": self._summary}[self.tool]
        r = read(out)
        return r | {"tool": self.tool, "clients": self.clients, "wall_s": wall,
                    "requests_per_s": r["ok"] / wall,
                    "tool_cpu_s": cpu, "tool_cpu_share_of_cores": cpu / (wall * os.cpu_count())}

    @staticmethod
    def _wrk(out: str) -> dict:
        r = json.loads(out.strip().splitlines()[-1])  # post_file.lua's line
        ok = r["requests"] - r["non2xx"]
        # wrk's percentiles are over every answer; with no refusals they are the 2xx ones.
        return {"requests": r["requests"], "ok": ok, "non2xx": r["non2xx"],
                "failed": r["socket_errors"] + r["timeouts"],
                "n": r["requests"], "p50_ms": r["p50_us"] / 1000, "p95_ms": r["p95_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000, "max_ms": r["max_us"] / 1000}

    def _hey(self, out: str) -> dict:
        self.rows = [(float(r["offset"]), float(r["response-time"]) * 1000,
                      int(r["status-code"])) for r in csv.DictReader(io.StringIO(out))]
        statuses = dict(Counter(str(status) for _, _, status in self.rows))
        ok = [ms for _, ms, status in self.rows if 200 <= status < 300]
        # hey's CSV leaves out requests that got no answer: a summary=True run counts those.
        return {"requests": len(self.rows), "ok": len(ok), "non2xx": len(self.rows) - len(ok),
                "failed": None,
                "status_counts": statuses} | percentiles(ok)

    @staticmethod
    def _summary(out: str) -> dict:
        found = failures(out)
        statuses = found["status_counts"]
        ok = sum(n for s, n in statuses.items() if s.startswith("2"))
        answered = sum(statuses.values())
        return {"requests": answered, "ok": ok, "non2xx": answered - ok,
                "failed": sum(found["errors"].values()), "errors": found["errors"],
                "status_counts": statuses, "n": 0}

    def latencies(self, status: int) -> list[float]:
        """Milliseconds of the answers with this status (hey)."""
        return [ms for _, ms, s in self.rows if s == status]


def wrk(url: str, body: Path, clients: int, seconds: float, ctype: str = "image/png") -> Load:
    """Closed loop: `clients` connections POST `body` for whole `seconds`."""
    env = {**os.environ, "WRK_BODY": str(body), "WRK_TYPE": ctype}
    return Load(subprocess.Popen(
        [tool("wrk"), "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "-s",
         str(WRK_SCRIPT), url], stdout=subprocess.PIPE, text=True, env=env), "wrk", clients)


def hey(url: str, clients: int, seconds: float, body: Path | None = None, qps: float = 0,
        headers: Sequence[str] = (), ctype: str = "image/png", summary: bool = False) -> Load:
    """hey for `seconds`: POST `body` (GET without one), each client at `qps` requests/s (0: as
    fast as answers come). `summary`: hey's text summary instead of its CSV: no latencies,
    but it counts the requests that got no answer, which the CSV leaves out."""
    args = ["-z", f"{seconds:g}s", "-c", str(clients)]
    args += ["-q", f"{qps:g}"] if qps else []
    for h in headers:
        args += ["-H", h]
    args += ["-m", "POST", "-T", ctype, "-D", str(body)] if body is not None else []
    fmt = [] if summary else ["-o", "csv"]
    return Load(subprocess.Popen([tool("hey"), *fmt, *args, url], stdout=subprocess.PIPE,
                                 text=True), "hey-summary" if summary else "hey", clients)


def failures(out: str) -> dict:
    """From hey's text summary: answers by status, and failed requests by error (a reset...)."""
    found: dict[str, dict[str, int]] = {"status_counts": {}, "errors": {}}
    section = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Status code distribution"):
            section = "status_counts"
        elif line.startswith("Error distribution"):
            section = "errors"
        elif section and line.startswith("["):  # "[200] 129 responses", "[3] Post ...: err"
            inside, _, rest = line[1:].partition("]")
            if section == "status_counts":
                key, count = inside, int(rest.split()[0])
            else:  # one line per socket address: keep the kind of error only
                key, count = rest.strip().rsplit(": ", 1)[-1], int(inside)
            found[section][key] = found[section].get(key, 0) + count
        elif not line:
            section = None
    return found
