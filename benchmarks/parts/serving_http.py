"""Serving performance in one run, every comparison interleaved round by round so that the
VM's drift hits all variants alike; each goal (issue #22; #11 before it) is a ratio within
this run.

    python -m benchmarks.serving http --bundle bundles/default            # full: ~15 minutes
    python -m benchmarks.serving http --bundle bundles/default --quick    # CI: about a minute

engines  the raw model in process: ONNX Runtime FP32 / INT8 and, where installed, OpenVINO
         reading the same ONNX files, at batch 1 and 64.
http     our service on its default provider=auto, pinned to ONNX Runtime, and as 2 workers x
         1 thread; the naive baseline (benchmarks/servers/naive_server.py) on ONNX Runtime and on
         OpenVINO; one 32x32 PNG per request: wrk (closed loop) at 1 and 32 connections, hey
         (open loop) at fixed offered rates; each load generator's own CPU time is recorded.
         The default service also gets 16 PNGs per request at 32 connections.
search   a 50k x 512 gallery with the service's default index settings against exact search.

Writes serving.json, serving.md and serving.png to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from simclr_embed.benchmarks.harness import hardware, hey, percentiles, wrk
from simclr_embed.benchmarks.process import ServiceProcess
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import make_session
from simclr_embed.service.settings import Settings

log = logging.getLogger("benchmarks.serving")
# name: (module, environment, the engine it serves: its throughput is measured next to it; None:
# the one provider=auto chose, read from /v1/model)
SERVERS = {"service": ("simclr_embed.cli serve", {}, None),
           "service_ort": ("simclr_embed.cli serve", {"SIMCLR_EMBED_PROVIDER": "cpu"},
                           "ort_int8"),
           # throughput-first: a process per core, each with one thread
           "service_2_workers": ("simclr_embed.cli serve", {"SIMCLR_EMBED_WORKERS": "2",
                                                            "SIMCLR_EMBED_THREADS": "1"}, None),
           "naive": ("simclr_embed.benchmarks.servers.naive_server", {}, "ort_int8"),
           "naive_openvino": ("simclr_embed.benchmarks.servers.naive_server",
                              {"SIMCLR_EMBED_PROVIDER": "openvino"}, "openvino_int8")}
ENGINE_OF_PROVIDER = {"OpenVINO-CPU": "openvino_int8", "CPUExecutionProvider": "ort_int8"}
BATCH_IMAGES = 16  # images per request in the batched run
GOALS = {  # name: (target, "min" = value must be at least the target, "max" = at most)
    # issue #22, on the default service (provider=auto)
    "http_p50_vs_engine_b1": (1.3, "max"), "throughput_32_vs_engine_b64": (0.75, "min"),
    "p99_ms_at_32": (50.0, "max"), "non2xx_at_32": (0, "max"),
    "batch16_images_vs_engine_b64": (0.9, "min"), "auto_took_the_fastest_engine": (1, "min"),
    "throughput_32_vs_naive_same_engine": (1.6, "min"),
    "int8_vs_fp32_b1": (4.0, "min"), "int8_vs_fp32_b64": (4.0, "min"),
    "search_p50_ms_50k": (1.0, "max"), "search_recall_at_10": (0.99, "min"),
    "restart_s_50k": (2.0, "max"),
}


# --- engines ----------------------------------------------------------------------------------
def runners(bundle, threads: int) -> dict:
    """name -> session: each runtime on each of the bundle's encoders, with the session settings
    the service runs with."""
    out = {}
    for provider, prefix in (("cpu", "ort"), ("openvino", "openvino")):
        for precision in ("fp32", "int8"):
            try:
                out[f"{prefix}_{precision}"] = make_session(
                    bundle.encoder_path(precision), threads, provider)
            except ValueError as e:  # openvino not installed
                log.warning("%s", e)
    return out


def accuracy(sessions: dict, data: str, per_class: int) -> dict:
    """Top-1 of the graph's linear head and mean cosine to ORT FP32, per engine, on real test
    images: the INT8 accuracy gates hold for whichever runtime serves."""
    from simclr_embed.training.data import load_dataset, stratified_subset

    test = stratified_subset(load_dataset(data)[1], per_class, seed=0)
    outs = {k: s.run(None, {"pixels": test.images}) for k, s in sessions.items()}
    ref = outs["ort_fp32"][0]
    return {k: {"linear_top1": 100 * float((lg.argmax(1) == test.labels).mean()),
                "cosine_to_ort_fp32_mean": float((emb * ref).sum(1).mean()),
                "images": len(test.labels)} for k, (emb, lg) in outs.items()}


def engines(sessions: dict, images: np.ndarray, rounds: int, reps: int) -> dict:
    """Latency (ms) per runtime x precision at batch 1 and 64, interleaved."""
    samples = {k: {1: [], 64: []} for k in sessions}
    for session in sessions.values():
        for b in (1, 64):
            session.run(None, {"pixels": images[:b]})
    for _ in range(rounds):
        for b in (1, 64):
            for name, session in sessions.items():
                for _ in range(reps if b == 1 else max(2, reps // 8)):
                    t0 = time.perf_counter()
                    session.run(None, {"pixels": images[:b]})
                    samples[name][b].append((time.perf_counter() - t0) * 1000)
    return {name: {"b1": percentiles(s[1]), "b64": percentiles(s[64]) | {
        "images_per_s": 64_000 / statistics.median(s[64])}} for name, s in samples.items()}


# --- HTTP, driven by wrk (closed loop) and hey (open loop) ------------------------------------
def closed_with_cpu(srv: ServiceProcess, url: str, png: Path, seconds: float) -> dict:
    """wrk at 32 connections, with the server's CPU per answered request split into its event
    loops' share (HTTP, routing, thumbnail decode) and its other threads' (model, decode pool)."""
    before = srv.cpu_seconds()
    r = wrk(url, png, 32, seconds).result()
    after, n = srv.cpu_seconds(), max(r["ok"], 1)
    return r | {f"server_{k}_cpu_ms_per_request": (after[k] - before[k]) * 1000 / n
                for k in after}


def images_per_s(session, images: np.ndarray, reps: int = 8) -> float:
    """The engine's batch-64 rate, median of `reps` runs."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.run(None, {"pixels": images[:64]})
        times.append(time.perf_counter() - t0)
    return 64 / statistics.median(times)


def served_engine(url: str) -> str:
    """The engine a server on provider=auto runs: the in-process session to compare it with."""
    with urllib.request.urlopen(url + "/v1/model", timeout=10) as r:
        return ENGINE_OF_PROVIDER[json.load(r)["provider"]]


def multipart(images: np.ndarray, path: Path) -> str:
    """BATCH_IMAGES PNGs as one multipart/form-data body written to `path`; its content type."""
    boundary = "simclr-embed-benchmark"
    parts = []
    for i, image in enumerate(images[:BATCH_IMAGES]):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                     f"filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n".encode()
                     + buf.getvalue() + b"\r\n")
    path.write_bytes(b"".join(parts) + f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}"


def batched(srv: ServiceProcess, body: tuple[Path, str], session, images: np.ndarray,
            seconds: float) -> dict:
    """wrk at 32 connections, BATCH_IMAGES images per request, against the engine's batch-64
    rate timed just before."""
    engine = images_per_s(session, images)
    r = wrk(srv.url + "/v1/embed", body[0], 32, seconds, body[1]).result()
    rate = r["requests_per_s"] * BATCH_IMAGES
    return r | {"images_per_s": rate, "engine_b64_images_per_s": engine,
                "vs_engine_b64": rate / engine}


def http(bundle_dir: Path, png: Path, batch: tuple[Path, str], threads: int, rounds: int,
         seconds: float, rates: tuple[int, ...], workdir: Path, sessions: dict,
         images: np.ndarray) -> dict:
    """Every server in SERVERS up side by side (the others idle while one is measured), round
    by round. Right before each 32-client run, the engine that server serves is timed at batch
    64 in this process, so that the throughput ratio compares moments seconds apart, not
    minutes (the VM's speed drifts)."""
    procs = {name: ServiceProcess(bundle_dir, workdir / f"data-{name}", workdir / f"{name}.log",
                                  module=module, **{"SIMCLR_EMBED_THREADS": str(threads), **env}
                                  ).start()
             for name, (module, env, engine) in SERVERS.items() if engine in (*sessions, None)}
    time.sleep(5)  # /readyz answers from the first worker up; let the other finish loading
    served = {name: SERVERS[name][2] or served_engine(srv.url) for name, srv in procs.items()}
    res: dict = {n: {"engine": served[n], "sequential": [], "closed_32": [],
                     "open": {r: [] for r in rates}} for n in procs}
    res["service"]["batch_16"] = []
    try:
        for r in range(rounds):
            for name, srv in procs.items():
                url = srv.url + "/v1/embed"
                res[name]["sequential"].append(wrk(url, png, 1, seconds).result())
                engine = images_per_s(sessions[served[name]], images)
                run = closed_with_cpu(srv, url, png, seconds)
                res[name]["closed_32"].append(run | {
                    "engine_b64_images_per_s": engine,
                    "vs_engine_b64": run["requests_per_s"] / engine})
                if name == "service":
                    res[name]["batch_16"].append(batched(srv, batch, sessions[served[name]],
                                                         images, seconds))
                for rate in rates:  # 10 req/s per client: a client falls behind only past 100 ms
                    res[name]["open"][rate].append(
                        hey(url, rate // 10, seconds, png, qps=10).result())
                log.info("round %d %s: sequential p50 %.2f ms, 32 clients %.0f req/s p99 %.1f ms",
                         r, name, res[name]["sequential"][-1]["p50_ms"],
                         res[name]["closed_32"][-1]["requests_per_s"],
                         res[name]["closed_32"][-1]["p99_ms"])
        for name, srv in procs.items():
            res[name]["rss_mb"] = srv.rss_mb()
    finally:
        for srv in procs.values():
            srv.stop()
    return res


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# --- search -------------------------------------------------------------------------------------
def search(bundle_dir: Path, data: str, n: int) -> dict:
    from simclr_embed.benchmarks.parts.gallery_search import restart_times, run_backend, vectors
    from simclr_embed.service.gallery import Gallery
    from simclr_embed.service.store import Space

    s = Settings()
    base, queries = vectors(bundle_dir, data, n)
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    with tempfile.TemporaryDirectory() as tmp:
        row = run_backend(f"embedded {s.index}", lambda: Gallery(
            Space("bench", "int8", base.shape[1]), Path(tmp) / "g.sqlite3", s.index, s.hnsw_m,
            s.hnsw_ef_search), base, queries, exact)
    return row | {"restart": restart_times(bundle_dir, rounds=2)}


# --- report -------------------------------------------------------------------------------------
def ratios(res: dict) -> dict[str, float]:
    """Each goal as a ratio within this run; `service` is the default (provider=auto) and is
    compared with the engine it chose, `service_ort` with ONNX Runtime's."""
    e, h = res["engines"], res["http"]
    svc = h["service"]
    served, fp32 = e[svc["engine"]], e[svc["engine"].replace("int8", "fp32")]
    fastest = max((k for k in e if k.endswith("int8")), key=lambda k: e[k]["b64"]["images_per_s"])
    naive = "naive_openvino" if svc["engine"] == "openvino_int8" else "naive"
    out = {"auto_took_the_fastest_engine": float(svc["engine"] == fastest),
           "int8_vs_fp32_b1": fp32["b1"]["p50_ms"] / served["b1"]["p50_ms"],
           "int8_vs_fp32_b64": fp32["b64"]["p50_ms"] / served["b64"]["p50_ms"],
           "int8_vs_ort_fp32_b1": e["ort_fp32"]["b1"]["p50_ms"] / served["b1"]["p50_ms"],
           "http_p50_vs_engine_b1": median_of(svc["sequential"], "p50_ms")
           / served["b1"]["p50_ms"],
           "throughput_32_vs_engine_b64": median_of(svc["closed_32"], "vs_engine_b64"),
           "p99_ms_at_32": median_of(svc["closed_32"], "p99_ms"),
           "non2xx_at_32": sum(r["non2xx"] for r in svc["closed_32"]),
           "batch16_images_vs_engine_b64": median_of(svc["batch_16"], "vs_engine_b64"),
           "throughput_32_vs_naive_same_engine": median_of(svc["closed_32"], "requests_per_s")
           / median_of(h[naive]["closed_32"], "requests_per_s")}
    for name in ("service_ort", "service_2_workers", "naive", "naive_openvino"):
        if name in h:
            out[f"{name}_throughput_32_vs_engine_b64"] = median_of(h[name]["closed_32"],
                                                                   "vs_engine_b64")
            out[f"{name}_http_p50_vs_engine_b1"] = median_of(h[name]["sequential"], "p50_ms") \
                / e[h[name]["engine"]]["b1"]["p50_ms"]
    if "search" in res:
        out |= {"search_p50_ms_50k": res["search"]["p50_ms"],
                "search_recall_at_10": res["search"]["recall_at_10"],
                "restart_s_50k": res["search"]["restart"]["restart_median_s"]}
    return out


def markdown(res: dict) -> str:
    lines = ["| engine (in process) | b1 p50 (ms) | b1 p99 (ms) | b64 p50 (ms) | images/s b64 |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in res["engines"].items():
        lines.append(f"| {name} | {r['b1']['p50_ms']:.2f} | {r['b1']['p99_ms']:.2f} | "
                     f"{r['b64']['p50_ms']:.1f} | {r['b64']['images_per_s']:.0f} |")
    h = res["http"]
    servers = list(h)
    lines += ["", "| HTTP, INT8, 1 PNG per request (median of rounds) | " + " | ".join(servers)
              + " |", "| --- |" + " --- |" * len(servers)]
    rows = [("sequential p50 (ms)", "sequential", "p50_ms"),
            ("sequential p99 (ms)", "sequential", "p99_ms"),
            ("32 clients closed loop: req/s", "closed_32", "requests_per_s"),
            ("32 clients closed loop: p50 (ms)", "closed_32", "p50_ms"),
            ("32 clients closed loop: p99 (ms)", "closed_32", "p99_ms"),
            ("32 clients closed loop: wrk CPU share", "closed_32", "tool_cpu_share_of_cores"),
            ("32 clients: engine's batch-64 images/s, timed just before", "closed_32",
             "engine_b64_images_per_s"),
            ("32 clients: req/s over that engine rate", "closed_32", "vs_engine_b64"),
            ("32 clients: server event-loop CPU per request (ms)", "closed_32",
             "server_loop_cpu_ms_per_request"),
            ("32 clients: server model + other threads CPU per request (ms)", "closed_32",
             "server_other_cpu_ms_per_request")]
    lines.append("| engine served | " + " | ".join(h[n]["engine"] for n in servers) + " |")
    for label, sec, key in rows:
        lines.append(f"| {label} | " + " | ".join(f"{median_of(h[n][sec], key):.2f}"
                                                   for n in servers) + " |")
    for rate in h["service"]["open"]:
        for key in ("requests_per_s", "p50_ms", "p99_ms", "tool_cpu_share_of_cores"):
            lines.append(f"| open loop, {rate} req/s offered: {key} | " + " | ".join(
                f"{median_of(h[n]['open'][rate], key):.2f}" for n in servers) + " |")
    b = h["service"]["batch_16"]
    lines += ["", f"| service, {BATCH_IMAGES} images per request, 32 clients | images/s | "
              "engine batch-64 images/s | ratio | p50 (ms) | p99 (ms) |",
              "| --- | --- | --- | --- | --- | --- |",
              f"| median of {len(b)} rounds | {median_of(b, 'images_per_s'):.0f} | "
              f"{median_of(b, 'engine_b64_images_per_s'):.0f} | "
              f"{median_of(b, 'vs_engine_b64'):.3f} | {median_of(b, 'p50_ms'):.2f} | "
              f"{median_of(b, 'p99_ms'):.2f} |"]
    lines += ["", "| accuracy (graph's linear head) | top-1 (%) | cosine to ORT FP32 |",
              "| --- | --- | --- |"]
    lines += [f"| {k} | {v['linear_top1']:.2f} | {v['cosine_to_ort_fp32_mean']:.4f} |"
              for k, v in res["accuracy"].items()]
    lines += ["", "| goal | value | target | met |", "| --- | --- | --- | --- |"]
    for k, v in res["ratios"].items():
        target, kind = GOALS.get(k, (None, ""))
        met = "" if target is None else ("yes" if (v >= target if kind == "min"
                                                   else v <= target) else "no")
        shown = "-" if target is None else f"{'>=' if kind == 'min' else '<='} {target:g}"
        lines.append(f"| {k} | {v:.3f} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def plots(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    e = res["engines"]
    names = list(e)
    axes[0].bar(names, [e[n]["b64"]["images_per_s"] for n in names], color="tab:blue")
    axes[0].set(title="engine images/s at batch 64", ylabel="images/s")
    axes[0].tick_params(axis="x", rotation=20)
    for name, color in (("service", "tab:green"), ("service_ort", "tab:purple"),
                        ("service_2_workers", "tab:orange"), ("naive", "tab:red"),
                        ("naive_openvino", "tab:brown")):
        if name not in res["http"]:
            continue
        opens = res["http"][name]["open"]
        rates = list(opens)
        axes[1].plot(rates, [median_of(opens[r], "p99_ms") for r in rates], marker="o",
                     color=color, label=name)
        axes[2].plot(rates, [median_of(opens[r], "requests_per_s") for r in rates], marker="o",
                     color=color, label=name)
    axes[1].set(title="open loop: p99 latency vs offered rate", xlabel="offered req/s",
                ylabel="p99 ms", yscale="log")
    axes[2].plot(rates, rates, ls=":", color="gray", label="offered")
    axes[2].set(title="open loop: answered vs offered", xlabel="offered req/s",
                ylabel="answered req/s")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend()
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# and with args.quick, fewer rounds and shorter runs (run())
QUICK = {"out": Path("benchmarks/results/quick/serving")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serving"))


def run(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    from simclr_embed.training.data import load_dataset, stratified_subset

    images = stratified_subset(load_dataset(args.data)[1], 7, seed=11).images[:64]
    q = args.quick
    settings = {"threads": args.threads, "rounds": 1 if q else 3, "reps": 20 if q else 100,
                "http_seconds": 1 if q else 8,
                "open_rates": (100,) if q else (200, 400, 600), "quick": q}
    res: dict = {"benchmark": "serving", "hardware": hardware(), "settings": settings,
                 "bundle": str(args.bundle), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    sessions = runners(bundle, args.threads)
    res["accuracy"] = accuracy(sessions, args.data, 20 if q else 200)
    res["engines"] = engines(sessions, images, settings["rounds"] + 2, settings["reps"])
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "query.png"
        Image.fromarray(images[0]).save(png)
        batch = (Path(tmp) / "batch.multipart", multipart(images, Path(tmp) / "batch.multipart"))
        res["http"] = http(args.bundle, png, batch, args.threads, settings["rounds"],
                           settings["http_seconds"], settings["open_rates"], Path(tmp),
                           sessions, images)
    if not q:
        res["search"] = search(args.bundle, args.data, 50_000)
    res["ratios"] = ratios(res)
    args.out.mkdir(parents=True, exist_ok=True)
    plots(res, args.out / "serving.png")
    (args.out / "serving.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "serving.md").write_text(markdown(res))
    log.info("\n%s\nwrote %s", markdown(res), args.out)
