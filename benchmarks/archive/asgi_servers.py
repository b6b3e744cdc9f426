"""The same app under two ASGI servers, interleaved round by round: uvicorn with httptools (as
`simclr-embed serve` runs it) and granian (Rust HTTP, `pip install granian`). One 32x32 PNG per
request: wrk at 1 connection (lone-request latency) and at 32 (throughput, p99), with the
server's CPU time per answered request (its whole process tree, from /proc).

    python -m benchmarks.asgi_servers --bundle bundles/default
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from simclr_embed.benchmarks.harness import hardware, write_result, wrk
from simclr_embed.benchmarks.process import ServiceProcess, free_port

log = logging.getLogger("asgi_servers")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (granian runs its app in a worker)."""
    pids = {pid}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.add(int(d))
        except OSError:
            pass
    ticks = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_granian(bundle: Path, data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("granian") or shutil.which("granian", path=str(Path(sys.executable).parent))
    if exe is None:
        raise SystemExit("granian is not installed: pip install granian")
    port = free_port()
    env = {**os.environ, "SIMCLR_EMBED_BUNDLE": str(bundle), "SIMCLR_EMBED_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen([exe, "--interface", "asgi", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--log-level", "warning",
                             "simclr_embed.benchmarks.servers.granian_app:app"], env=env,
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"granian not ready: see {log_path}")


def measure(url: str, pid: int, png: Path, seconds: float) -> dict:
    lone = wrk(url + "/v1/embed", png, 1, seconds).result()
    before = tree_cpu_s(pid)
    loaded = wrk(url + "/v1/embed", png, 32, seconds).result()
    answered = max(loaded["requests"] - loaded["non2xx"], 1)
    return {"lone_p50_ms": lone["p50_ms"], "lone_p99_ms": lone["p99_ms"],
            "requests_per_s_32": loaded["requests_per_s"], "p99_ms_32": loaded["p99_ms"],
            "non2xx_32": loaded["non2xx"],
            "server_cpu_ms_per_request_32": (tree_cpu_s(pid) - before) * 1000 / answered}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/asgi_servers.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from simclr_embed.training.data import load_dataset, stratified_subset

    image = stratified_subset(load_dataset(args.data)[1], 7, seed=11).images[0]
    runs: dict[str, list[dict]] = {"uvicorn": [], "granian": []}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        png = t / "query.png"
        Image.fromarray(image).save(png)
        uv = ServiceProcess(args.bundle, t / "uvicorn", t / "uvicorn.log").start()
        gr, gr_url = start_granian(args.bundle, t / "granian", t / "granian.log")
        try:
            time.sleep(3)
            for r in range(args.rounds):
                for name, url, pid in (("uvicorn", uv.url, uv.pid), ("granian", gr_url, gr.pid)):
                    runs[name].append(measure(url, pid, png, args.seconds))
                    log.info("round %d %s: %s", r, name, runs[name][-1])
        finally:
            gr.terminate()
            gr.wait(30)
            uv.stop()
    medians = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
               for name, rs in runs.items()}
    write_result(args.out, {"benchmark": "asgi_servers", "hardware": hardware(),
                            "bundle": args.bundle.name, "rounds": args.rounds,
                            "seconds": args.seconds, "runs": runs, "medians": medians})
    log.info("medians: %s", medians)


if __name__ == "__main__":
    main()
