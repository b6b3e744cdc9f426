"""INT8 vs FP32 vs PyTorch, in process and over HTTP, side by side in one run.

    python -m benchmarks.serving --bundle bundles/default            # full: minutes
    python -m benchmarks.serving --bundle bundles/default --quick    # CI: seconds, still real

In process (same real images, threads fixed): PyTorch eager FP32, ORT FP32, ORT INT8 latency at
batch 1 and throughput at batch 8/32/64, variants interleaved round by round. Over HTTP (a real
server started here per precision): sequential embed/search/classify latency, then closed-loop
load at 1/8/32/64 clients. Writes JSON, a Markdown summary and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from simclr_embed.benchmarks import loadgen
from simclr_embed.benchmarks.common import hardware
from simclr_embed.benchmarks.process import ServiceProcess
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import make_session

log = logging.getLogger("benchmarks.serving")
PRECISIONS = ("int8", "fp32")


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "stdev_ms": float(a.std())}


def in_process(bundle, checkpoint: str | None, images: np.ndarray, threads: int, rounds: int,
               reps: int, batches: tuple[int, ...]) -> dict:
    """Latency samples (ms) per variant and batch, interleaved so drift hits all alike."""
    runners = {f"ort_{p}": _ort_runner(bundle, p, threads) for p in PRECISIONS}
    if checkpoint:
        runners = {"torch_fp32": _torch_runner(checkpoint, threads), **runners}
    samples: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in runners}
    for b in batches:
        for run in runners.values():
            run(images[:b])  # warm-up per shape
    for _ in range(rounds):
        for b in batches:
            for name, run in runners.items():
                for _ in range(reps if b == 1 else max(1, reps // 4)):
                    t0 = time.perf_counter()
                    run(images[:b])
                    samples[name][b].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, per_batch in samples.items():
        out[name] = {f"b{b}": pct(v) | {"images_per_s": b * 1000 / statistics.median(v)}
                     for b, v in per_batch.items()}
        out[name]["b1_samples_ms"] = per_batch[1]
    return out


def _ort_runner(bundle, precision: str, threads: int):
    session = make_session(bundle.encoder_path(precision), threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _torch_runner(checkpoint: str, threads: int):
    import torch

    from simclr_embed.export.onnx_export import build_embed_classify
    from simclr_embed.training.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model = build_embed_classify(load_checkpoint(checkpoint))

    def run(x: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def encode_pngs(images: np.ndarray) -> list[bytes]:
    out = []
    for x in images:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def over_http(bundle_dir: Path, precision: str, pngs: list[bytes], threads: int, seq_n: int,
              concurrency: tuple[int, ...], seconds: float, workdir: Path) -> dict:
    srv = ServiceProcess(bundle_dir, workdir / f"data-{precision}",
                         workdir / f"server-{precision}.log", SIMCLR_EMBED_PRECISION=precision,
                         SIMCLR_EMBED_THREADS=str(threads)).start()
    try:
        result: dict = {"rss_mb_start": srv.rss_mb(), "sequential": {}, "load": []}
        for route in ("embed", "search", "classify"):
            reqs = [loadgen.raw_request(f"/v1/{route}", p, "image/png") for p in pngs]
            lat = asyncio.run(loadgen.sequential("127.0.0.1", srv.port, reqs, seq_n))
            result["sequential"][route] = pct(lat)
            if route == "embed":
                result["embed_samples_ms"] = lat
            log.info("%s %s sequential p50 %.2f ms", precision, route, np.median(lat))
        reqs = [loadgen.raw_request("/v1/embed", p, "image/png") for p in pngs]
        for c in concurrency:
            res = asyncio.run(loadgen.run_load("127.0.0.1", srv.port, reqs, c, seconds))
            result["load"].append(res.summary())
            s = result["load"][-1]
            log.info("%s c=%d: %.0f req/s p50 %.1f p99 %.1f ms errors %d (client CPU %.0f %%)",
                     precision, c, s["requests_per_s"], s["p50_ms"], s["p99_ms"], s["errors"],
                     100 * s["client_cpu_share_of_2_cores"])
        result["rss_mb_end"] = srv.rss_mb()
    finally:
        srv.stop()
    return result


def overload(bundle_dir: Path, pngs: list[bytes], threads: int, queue: int, clients: int,
             seconds: float, workdir: Path) -> dict:
    """More clients than a small image queue admits: what the bound does (503 + Retry-After)."""
    srv = ServiceProcess(bundle_dir, workdir / "data-overload", workdir / "server-overload.log",
                         SIMCLR_EMBED_THREADS=str(threads),
                         SIMCLR_EMBED_MAX_QUEUE_IMAGES=str(queue)).start()
    try:
        reqs = [loadgen.raw_request("/v1/embed", p, "image/png") for p in pngs]
        res = asyncio.run(loadgen.run_load("127.0.0.1", srv.port, reqs, clients, seconds))
        after = asyncio.run(loadgen.sequential("127.0.0.1", srv.port, reqs, 50))
    finally:
        srv.stop()
    return {"max_queue_images": queue, **res.summary(),
            "lone_request_after_burst_p50_ms": float(np.median(after))}


def ratios(res: dict) -> dict:
    ip, http = res["in_process"], res["http"]
    batches = [b for b in ip["ort_int8"] if not b.endswith("_ms")]
    best_batch = max(batches, key=lambda b: ip["ort_int8"][b]["images_per_s"])
    embed_p50 = {p: http[p]["sequential"]["embed"]["p50_ms"] for p in PRECISIONS}
    out = {
        "int8_speedup_in_process_b1":
            ip["ort_fp32"]["b1"]["p50_ms"] / ip["ort_int8"]["b1"]["p50_ms"],
        "int8_speedup_http_embed_p50": embed_p50["fp32"] / embed_p50["int8"],
    }
    for p in PRECISIONS:
        raw = ip[f"ort_{p}"]
        peak = max(x["requests_per_s"] for x in http[p]["load"])
        out[f"{p}_http_overhead_p50"] = embed_p50[p] / raw["b1"]["p50_ms"]
        out[f"{p}_service_vs_engine_throughput"] = peak / raw[best_batch]["images_per_s"]
    if "torch_fp32" in ip:
        out["int8_vs_torch_b1"] = ip["torch_fp32"]["b1"]["p50_ms"] / ip["ort_int8"]["b1"]["p50_ms"]
    return out


def markdown(res: dict) -> str:
    ip, http = res["in_process"], res["http"]
    lines = ["| in process | p50 b1 (ms) | p99 b1 (ms) | img/s b8 | img/s b32 | img/s b64 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in ip.items():
        lines.append(f"| {name} | {r['b1']['p50_ms']:.2f} | {r['b1']['p99_ms']:.2f} | "
                     + " | ".join(f"{r[f'b{b}']['images_per_s']:.0f}" if f"b{b}" in r else "-"
                                  for b in (8, 32, 64)) + " |")
    lines += ["", "| over HTTP | embed p50 / p99 (ms) | search p50 (ms) | classify p50 (ms) | "
              "RSS start / end (MB) |", "| --- | --- | --- | --- | --- |"]
    for p in PRECISIONS:
        s = http[p]["sequential"]
        lines.append(f"| {p} | {s['embed']['p50_ms']:.2f} / {s['embed']['p99_ms']:.2f} | "
                     f"{s['search']['p50_ms']:.2f} | {s['classify']['p50_ms']:.2f} | "
                     f"{http[p]['rss_mb_start']:.0f} / {http[p]['rss_mb_end']:.0f} |")
    lines += ["", "| load (embed, 1 image) | clients | req/s | p50 (ms) | p95 (ms) | p99 (ms) | "
              "errors | client CPU |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in PRECISIONS:
        for s in http[p]["load"]:
            lines.append(f"| {p} | {s['concurrency']} | {s['requests_per_s']:.0f} | "
                         f"{s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | "
                         f"{s['errors']} | {100 * s['client_cpu_share_of_2_cores']:.0f} % |")
    o = res["overload"]
    lines += ["", f"Overload (INT8, queue bound {o['max_queue_images']} images, "
              f"{o['concurrency']} clients): {o['requests_per_s']:.0f} req/s answered 200 "
              f"(p50 {o['p50_ms']:.0f} ms, p99 {o['p99_ms']:.0f} ms), {o['errors']} refused with "
              f"503 (p50 {o['error_p50_ms'] or 0:.0f} ms); a lone request right after the burst: "
              f"{o['lone_request_after_burst_p50_ms']:.1f} ms."]
    lines += ["", "| ratio | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    acc = res["accuracy"]
    lines += ["", f"Accuracy (export report, {acc['test_images']} test images): linear top-1 "
              f"FP32 {acc['fp32']['linear_top1']:.2f} % / INT8 {acc['int8']['linear_top1']:.2f} %,"
              f" kNN top-1 FP32 {acc['fp32']['knn_top1']:.2f} % / INT8 "
              f"{acc['int8']['knn_top1']:.2f} %, cosine mean {acc['cosine_mean']:.4f}."]
    return "\n".join(lines) + "\n"


def plots(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    cdfs = {f"in-process {k}": v["b1_samples_ms"] for k, v in res["in_process"].items()}
    cdfs |= {f"HTTP embed {p}": res["http"][p]["embed_samples_ms"] for p in PRECISIONS}
    for label, samples in cdfs.items():
        lat = np.sort(samples)
        axes[0].plot(lat, np.linspace(0, 1, len(lat)), label=label)
    for p in PRECISIONS:
        load = res["http"][p]["load"]
        c = [s["concurrency"] for s in load]
        axes[1].plot(c, [s["requests_per_s"] for s in load], marker="o", label=p)
        axes[2].plot(c, [s["p99_ms"] for s in load], marker="o", label=p)
    axes[0].set(title="Latency CDF, 1 image", xlabel="ms", ylabel="fraction", xscale="log")
    axes[1].set(title="Throughput vs clients (embed)", xlabel="clients", ylabel="req/s",
                xscale="log")
    axes[2].set(title="p99 latency vs clients (embed)", xlabel="clients", ylabel="ms",
                xscale="log", yscale="log")
    for ax in axes:
        ax.xaxis.set_minor_formatter(NullFormatter())  # log axes: label decades only
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--checkpoint", default=None,
                   help="for the PyTorch eager baseline (none without it)")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="seconds, for CI: asserts nothing")
    p.add_argument("--out", default="benchmarks/results/serving")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bundle = load_bundle(args.bundle)
    from simclr_embed.training.data import load_dataset, stratified_subset

    _, test = load_dataset(args.data)
    images = stratified_subset(test, 7, seed=11).images[:64]  # (64, 32, 32, 3) real images
    ckpt = args.checkpoint  # manifests name no server paths
    if ckpt is None or not Path(ckpt).exists():
        log.warning("checkpoint %s not found: no PyTorch baseline", ckpt)
        ckpt = None
    q = args.quick
    settings = {"threads": args.threads, "rounds": 2 if q else 7, "reps": 4 if q else 20,
                "sequential_n": 20 if q else 300, "load_seconds": 1.0 if q else 10.0,
                "concurrency": (1, 8) if q else (1, 8, 32, 64), "quick": q}
    res: dict = {"benchmark": "serving", "hardware": hardware(), "settings": settings,
                 "bundle": str(args.bundle), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    res["in_process"] = in_process(bundle, ckpt, images, args.threads, settings["rounds"],
                                   settings["reps"], (1, 8, 32, 64))
    pngs = encode_pngs(images)
    with tempfile.TemporaryDirectory() as tmp:
        res["http"] = {prec: over_http(Path(args.bundle), prec, pngs, args.threads,
                                       settings["sequential_n"], settings["concurrency"],
                                       settings["load_seconds"], Path(tmp)) for prec in PRECISIONS}
        res["overload"] = overload(Path(args.bundle), pngs, args.threads, 16,
                                   16 if q else 128, settings["load_seconds"], Path(tmp))
    res["ratios"] = ratios(res)
    res["accuracy"] = bundle.manifest["metrics"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots(res, out / "serving.png")
    (out / "serving.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "serving.md").write_text(markdown(res))
    log.info("\n%s\nwrote %s", markdown(res), out)


if __name__ == "__main__":
    main()
