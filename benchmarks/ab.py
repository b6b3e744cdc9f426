"""Two or more configurations of the service side by side over HTTP, round by round: wrk with one
client (latency) and with 32 (throughput, p99), and the server's CPU per request split into its
event loop's and its other threads'. A variant is settings (SIMCLR_EMBED_*) and arguments of
benchmarks.servers.variant_server, which every variant runs under, e.g. for a special case's
evidence

    python -m benchmarks.ab --bundle bundles/default --out benchmarks/results/gc_settle.json \\
        settled unsettled:--no-settle
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from simclr_embed.benchmarks.harness import hardware, measurement, write_result, wrk
from simclr_embed.benchmarks.parts.serving_http import closed_with_cpu
from simclr_embed.benchmarks.process import ServiceProcess

log = logging.getLogger("benchmarks.ab")
Variant = tuple[dict[str, str], list[str]]  # environment, variant_server arguments
SERVER = "simclr_embed.benchmarks.servers.variant_server"
KEYS = ("p50_ms", "p99_ms", "requests_per_s", "server_loop_cpu_ms_per_request",
        "server_other_cpu_ms_per_request")


def compare(bundle: Path, variants: dict[str, Variant], rounds: int,
            seconds: float) -> dict:
    """name -> {sequential, closed_32}: medians over rounds of each variant's runs, and the
    per-round values of requests/s and p99 at 32 clients."""
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        res = _measure(Path(tmp), bundle, variants, rounds, seconds)
    return {name: {sec: {k: statistics.median(run[k] for run in runs) for k in KEYS
                         if k in runs[0]}
                   | {"rounds": len(runs), "requests_per_s_by_round":
                      [run["requests_per_s"] for run in runs],
                      "p99_ms_by_round": [run["p99_ms"] for run in runs]}
                   for sec, runs in r.items()}
            | {"env": variants[name][0], "args": variants[name][1]}
            for name, r in res.items()}


def _measure(work: Path, bundle: Path, variants: dict[str, Variant], rounds: int,
             seconds: float) -> dict[str, dict[str, list[dict]]]:
    png = work / "query.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)).save(png)
    procs = {name: ServiceProcess(bundle, work / f"data-{name}", work / f"{name}.log",
                                  " ".join([SERVER, *args]), **env).start()
             for name, (env, args) in variants.items()}
    res: dict = {name: {"sequential": [], "closed_32": []} for name in procs}
    try:
        for r in range(rounds):
            for name, srv in procs.items():
                url = srv.url + "/v1/embed"
                res[name]["sequential"].append(wrk(url, png, 1, seconds).result())
                res[name]["closed_32"].append(closed_with_cpu(srv, url, png, seconds))
                log.info("round %d %s: %.0f req/s at 32 clients", r, name,
                         res[name]["closed_32"][-1]["requests_per_s"])
    finally:
        for srv in procs.values():
            srv.stop()
    return res


def parse_variant(text: str) -> tuple[str, Variant]:
    """'name' or 'name:VAR=value,--flag,--option=value'."""
    name, _, rest = text.partition(":")
    items = [item for item in rest.split(",") if item]
    env = dict(kv.split("=", 1) for kv in items if not kv.startswith("--"))
    return name, (env, [a for a in items if a.startswith("--")])


QUICK = {"rounds": 1, "seconds": 1}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("variants", nargs="+", type=parse_variant,
                   help="name[:SIMCLR_EMBED_X=value,--no-hot-path,...]; the first is the "
                   "reference")
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8, help="per wrk run")
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> None:
    res = compare(args.bundle, dict(args.variants), args.rounds, args.seconds)
    write_result(args.out, {"benchmark": "ab", "hardware": hardware(), "rounds": args.rounds,
                            "seconds": args.seconds, "variants": res})
    for name, r in res.items():
        log.info("%s: %s", name, r)




if __name__ == "__main__":
    measurement(__doc__, sys.modules[__name__])
