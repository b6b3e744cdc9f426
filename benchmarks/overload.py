"""Overload: 200 clients send 1 MB PNGs to one server for a fixed time (hey, from Debian), while
a third hey probes /healthz at a fixed rate. hey's CSV lists each answered request but leaves out
the failed ones (a connection reset), and its summary counts those but gives no latency by
status: so the 200 clients are two hey processes of half each, one writing CSV and one its
summary, side by side under the same load. Reports, for answered (200) and refused (503)
requests apart, n and p50/p95/p99; failed requests by error; the /healthz latency during the
burst; the server's peak RSS (VmHWM); and the load generators' own CPU time.

    python -m benchmarks.overload --bundle bundles/default --data ../shared/data/cifar10

With `--deadlines 0 0.5` each load runs without and with an X-Request-Timeout of 0.5 s: 504s
are reported apart, with the work the server dropped unrun by stage (decode, model).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from simclr_embed.benchmarks.harness import hardware, hey, measurement, percentiles, write_result
from simclr_embed.benchmarks.process import ServiceProcess

log = logging.getLogger("overload")


def megabyte_png(data: str, target: int = 2**20) -> bytes:
    """A real CIFAR-10 test image, upscaled with a little grain until its PNG is ~1 MB."""
    from simclr_embed.training.data import load_dataset

    _, test = load_dataset(data)
    base = Image.fromarray(test.images[3]).resize((800, 800), Image.BICUBIC)
    rng = np.random.default_rng(0)
    for amplitude in range(1, 64):
        grain = rng.integers(-amplitude, amplitude + 1, (800, 800, 3))
        arr = np.clip(np.asarray(base, int) + grain, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        if buf.tell() >= target:
            return buf.getvalue()
    raise RuntimeError("could not reach the target size")


def refusal_buckets(metrics: bytes) -> dict[str, float]:
    """The server's own latency histogram for refusals (they match no route): le -> count."""
    out = {}
    for line in metrics.decode().splitlines():
        if line.startswith('simclr_embed_request_latency_seconds_bucket{le="') and \
                'route="unmatched"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def deadline_drops(metrics: bytes) -> dict[str, float]:
    """simclr_embed_deadline_dropped_total by stage (the work deadlines saved), and the images
    the model ran (the sum of batch sizes): as many as the requests answered 200 when the model
    ran nothing for a request that had expired."""
    out = {"model_images": 0.0}
    for line in metrics.decode().splitlines():
        if line.startswith("simclr_embed_deadline_dropped_total{"):
            out[line.split('stage="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("simclr_embed_batch_size_sum{"):
            out["model_images"] += float(line.rsplit(" ", 1)[1])
    return out


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def burst(bundle: Path, body: bytes, clients: int, seconds: int, threads: int,
        rate: float, workers: int = 1, deadline: float = 0) -> dict:
    """One server, one burst. rate 0: closed loop (each client sends again at once, refused or
    not: the worst case); rate r: open loop, each client r requests/s whatever the answers.
    deadline > 0: every request says X-Request-Timeout (service/deadline.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServiceProcess(bundle, Path(tmp) / "data", Path(tmp) / "server.log",
                             SIMCLR_EMBED_THREADS=str(threads),
                             SIMCLR_EMBED_WORKERS=str(workers)).start()
        try:
            start_rss = srv.rss_mb()
            img = Path(tmp) / "big.png"
            img.write_bytes(body)
            t0 = time.perf_counter()
            timeout = [f"X-Request-Timeout: {deadline:g}"] if deadline else []
            url = srv.url + "/v1/embed"
            loads = [hey(url, clients // 2, seconds, img, rate, timeout),
                     hey(url, clients // 2, seconds, img, rate, timeout, summary=True),
                     hey(srv.url + "/healthz", 1, seconds, qps=20)]
            burst, _, probe = loads
            results = [load.result() for load in loads]
            wall = time.perf_counter() - t0
            peak = vm_hwm_mb(srv.pid)
            metrics = urllib.request.urlopen(srv.url + "/metrics").read()
            server_side, dropped = refusal_buckets(metrics), deadline_drops(metrics)
            log_text = srv.stop()
        finally:
            srv.stop()
    other_half = results[1]
    gen_cpu = sum(r["tool_cpu_s"] for r in results)
    return {
        "mode": (f"open loop, {rate:g} req/s per client ({rate * clients:g} offered)" if rate
                 else "closed loop (no pause between requests)")
        + (f", X-Request-Timeout {deadline:g} s" if deadline else ""),
        "clients": clients, "seconds": seconds, "body_bytes": len(body), "ort_threads": threads,
        "workers": workers,
        "requests": results[0]["requests"],
        "status_counts": results[0]["status_counts"],
        "other_half": {"status_counts": other_half["status_counts"],
                       "errors": other_half["errors"]},
        "failed": other_half["failed"],
        "answered": percentiles(burst.latencies(200)),
        "refused": percentiles(burst.latencies(503)),
        "deadline_s": deadline or None, "past_deadline": percentiles(burst.latencies(504)),
        "deadline_dropped": dropped,
        "answered_total": len(burst.latencies(200)) + other_half["status_counts"].get("200", 0),
        "healthz": percentiles([ms for _, ms, _ in probe.rows]),
        "server_rss_mb": {"start": start_rss, "peak": peak},
        "server_side_refusal_seconds_cumulative": server_side,
        "load_generator_cpu_s": gen_cpu,
        "load_generator_cpu_share": gen_cpu / wall / (os.cpu_count() or 1),
        "server_tracebacks": log_text.count("Traceback"),
    }


def markdown(runs: list[dict]) -> str:
    lines = ["| load | what | n | p50 (ms) | p95 (ms) | p99 (ms) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        for key, label in (("answered", "answered 200"), ("refused", "refused 503"),
                           ("past_deadline", "past its deadline 504"),
                           ("healthz", "/healthz during the burst")):
            s = r.get(key, {"n": 0})
            if s["n"]:
                lines.append(f"| {r['mode']} | {label} | {s['n']} | {s['p50_ms']:.1f} | "
                             f"{s['p95_ms']:.1f} | {s['p99_ms']:.1f} |")
    lines += ["", "| load | refusals within 1 / 10 ms, server side | server RSS start / peak (MB) "
              "| statuses | failed (resets), other half | hey CPU (share of all cores) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        b = r["server_side_refusal_seconds_cumulative"]
        total = b.get("+Inf", 0) or 1
        lines.append(f"| {r['mode']} | {100 * b.get('0.001', 0) / total:.1f} % / "
                     f"{100 * b.get('0.01', 0) / total:.1f} % | "
                     f"{r['server_rss_mb']['start']:.0f} / {r['server_rss_mb']['peak']:.0f} | "
                     f"{r['status_counts']} | {r['failed']} of "
                     f"{r['failed'] + sum(r['other_half']['status_counts'].values())} | "
                     f"{100 * r['load_generator_cpu_share']:.0f} % |")
    return "\n".join(lines) + "\n"


QUICK = {"clients": 20, "seconds": 2, "rates": [0],
         "out": Path("benchmarks/results/quick/overload")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn workers; above 1 the RSS columns are the supervisor's")
    p.add_argument("--rates", type=float, nargs="+", default=[0, 1, 5],
                   help="per-client requests/s; 0 = closed loop")
    p.add_argument("--deadlines", type=float, nargs="+", default=[0],
                   help="X-Request-Timeout of every request in s, one run each; 0 = none")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/overload"))
    p.add_argument("--name", default="overload", help="the result files' name")


def run(args: argparse.Namespace) -> None:
    body = megabyte_png(args.data)
    log.info("body: %d bytes; %d clients for %d s", len(body), args.clients, args.seconds)
    runs = [burst(args.bundle, body, args.clients, args.seconds, args.threads, rate, args.workers,
                deadline) for rate in args.rates for deadline in args.deadlines]
    write_result(args.out / f"{args.name}.json", {"benchmark": "overload", "hardware": hardware(),
                                                   "bundle": args.bundle.name, "runs": runs})
    (args.out / f"{args.name}.md").write_text(markdown(runs))
    log.info("\n%s", markdown(runs))




if __name__ == "__main__":
    measurement(__doc__, sys.modules[__name__])
