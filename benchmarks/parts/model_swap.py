"""Several models in one server, and a model swap under load (#23).

- memory: the server's RSS serving bundle A alone and A + B, each warmed and answering, in
  interleaved rounds: what one more model costs.
- swap: wrk, 32 clients, examples/cat.png (96x96) per request, against a server on A; a third
  of the way in, A's directory is replaced by B (staged beside it, renamed in) and the server
  gets SIGHUP.
  The same run without a swap is the baseline. hey through a second swap gives each request's
  start and latency, for the p99 of the requests sent while the swap ran (from the SIGHUP to
  the old model's drain), and the answers per half second through it (model_swap.png).

- freeze (--freeze N, #39): the live server's gallery holds N random unit vectors (written
  into the database it serves before it starts, then an HNSW graph built over them), a few
  more added through the API so that stopping the old engine writes a whole index snapshot;
  8 clients embed in a closed loop while one more calls /healthz back to back; the swap to B
  (new weights) runs from the SIGHUP to the old model's drain. The longest /healthz answer in
  that window says how long the event loop stood still.

    python -m benchmarks.serving swap --bundles bundles/default bundles/own
    python -m benchmarks.serving swap --bundles A B --freeze 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from simclr_embed.benchmarks.harness import hardware, hey, percentiles, write_result, wrk
from simclr_embed.benchmarks.process import ServiceProcess

log = logging.getLogger("benchmarks.model_swap")
CLIENTS = 32
KEY = "bench-key"
BIN_S = 0.5  # the plot's resolution
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cat.png"  # 32x32 CIFAR-10


def served(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]


def warm(srv: ServiceProcess, body: bytes) -> None:
    for model in served(srv.url):
        for _ in range(50):
            httpx.post(srv.url + "/v1/embed", params={"model": model}, content=body,
                       headers={"content-type": "image/png"}).raise_for_status()


def memory_round(a: Path, b: Path, work: Path, body: bytes) -> dict:
    out = {}
    for name, more in (("one_model", ""), ("two_models", str(b))):
        data = work / f"mem-{name}"
        shutil.rmtree(data, ignore_errors=True)
        srv = ServiceProcess(a, data, work / f"{name}.log", SIMCLR_EMBED_MORE_BUNDLES=more)
        srv.start(timeout=300)
        try:
            warm(srv, body)
            out[name] = srv.rss_mb()
        finally:
            srv.stop()
    return out


class Live:
    """A server on a copy of A, whose directory a swap replaces with B."""

    def __init__(self, a: Path, work: Path, gallery: int = 0) -> None:
        self.a, self.dir = a, work / "live" / "model"
        shutil.rmtree(self.dir.parent, ignore_errors=True)
        shutil.copytree(a, self.dir)
        shutil.rmtree(work / "live-data", ignore_errors=True)
        if gallery:
            fill_gallery(a, work / "live-data", gallery)
        self.srv = ServiceProcess(self.dir, work / "live-data", work / "live.log",
                                  SIMCLR_EMBED_API_KEY=KEY).start(600)
        self.first = served(self.srv.url)[0]

    def swap_to(self, b: Path) -> tuple[float, float]:
        """(seconds from the SIGHUP until the new model answers, until the old one drained)."""
        staged = self.dir.with_name("model.new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(b, staged)
        old = self.dir.with_name("model.old")
        shutil.rmtree(old, ignore_errors=True)
        self.dir.rename(old)
        staged.rename(self.dir)
        log_len = len(self.srv.log_path.read_text())
        t0 = time.perf_counter()
        self.srv.proc.send_signal(signal.SIGHUP)
        while served(self.srv.url)[0] == self.first:
            time.sleep(0.01)
        swapped = time.perf_counter() - t0
        while "drained and stopped" not in self.srv.log_path.read_text()[log_len:]:
            time.sleep(0.01)
        return swapped, time.perf_counter() - t0


def wrk_run(url: str, png: Path, seconds: int, during=None) -> dict:
    load = wrk(url + "/v1/embed", png, CLIENTS, seconds)
    extra = {}
    if during is not None:
        time.sleep(seconds / 3)
        extra["swap_s"], extra["drained_s"] = during()
    return load.result() | extra


def hey_swap(live: Live, b: Path, png: Path, seconds: int) -> dict:
    """Each request's start and latency through a swap: the p99 of those sent during it."""
    load = hey(live.srv.url + "/v1/embed", CLIENTS, seconds, png)
    time.sleep(seconds / 3)
    t_sig = time.perf_counter() - load.t0
    swapped, drained = live.swap_to(b)
    r = load.result()
    start, ms, _ = (np.array(column) for column in zip(*load.rows, strict=True))
    inside = (start >= t_sig) & (start <= t_sig + drained)
    answered = start + ms / 1000
    return {"requests": r["requests"], "non2xx": r["non2xx"],
            "swap_s": swapped, "drained_s": drained, "sighup_at_s": t_sig,
            "during_swap": percentiles(ms[inside]), "outside_swap": percentiles(ms[~inside]),
            "answers_per_bin": np.histogram(answered, bins=np.arange(0, seconds + BIN_S / 2,
                                                                      BIN_S))[0].tolist()}


def fill_gallery(bundle: Path, data: Path, n: int) -> None:
    """n random unit vectors in the gallery the server on `bundle` will open (its own
    function finds the file), committed in chunks as the API would."""
    from simclr_embed.service.bundle import load_bundle, model_id
    from simclr_embed.service.gallery import SQLiteStore, gallery_path
    from simclr_embed.service.store import Space

    manifest = load_bundle(bundle).manifest
    space = Space(model_id(manifest), "int8", int(manifest["embedding_dim"]))
    store = SQLiteStore(gallery_path(data, space), space)
    rng = np.random.default_rng(0)
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        v = rng.standard_normal((m, space.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.add([f"r{start + i}" for i in range(m)], [None] * m, v)
    store.close()


def built(model: dict) -> bool:
    """The background rebuild over the filled gallery is done: an HNSW graph whose recall was
    measured, or exact search chosen by that measurement (before #39: any HNSW graph)."""
    recall = model.get("gallery_recall")
    if recall is None:
        return model["gallery_index"] == "hnsw"
    return bool(recall.get("measured_at") or recall.get("hnsw"))


def freeze_round(a: Path, b: Path, work: Path, n: int, body: bytes) -> dict:
    """The longest /healthz answers while a server whose gallery holds n vectors swaps A for
    B under load (see the module's docstring)."""
    import threading

    live = Live(a, work, gallery=n)
    try:
        url = live.srv.url
        while not built(httpx.get(url + "/v1/model", timeout=60).json()):
            time.sleep(0.5)  # the graph over the n vectors is built in the background
        dim = len(httpx.post(url + "/v1/embed", content=body,
                             headers={"content-type": "image/png"}).json()["embeddings"][0])
        extra = np.random.default_rng(1).standard_normal((64, dim))
        httpx.post(url + "/v1/gallery", json={"items": [
            {"id": f"api{i}", "embedding": (v / np.linalg.norm(v)).tolist()}
            for i, v in enumerate(extra)]}, headers={"x-api-key": KEY},
            timeout=60).raise_for_status()
        stop, health, loads = threading.Event(), [], []

        def healthz() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    c.get("/healthz").raise_for_status()
                    health.append((t0, (time.perf_counter() - t0) * 1000))

        def embed() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not stop.is_set():
                    loads.append(c.post("/v1/embed", content=body,
                                        headers={"content-type": "image/png"}).status_code)

        threads = [threading.Thread(target=healthz)] + [threading.Thread(target=embed)
                                                        for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(2)
        t_sig = time.perf_counter()
        swapped, drained = live.swap_to(b)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
    finally:
        live.srv.stop()
    inside = np.array([ms for t0, ms in health if t_sig <= t0 <= t_sig + drained + 0.5])
    before = np.array([ms for t0, ms in health if t0 < t_sig])
    return {"gallery_vectors": n, "swap_s": swapped, "drained_s": drained,
            "healthz_during_swap": percentiles(inside),
            "healthz_before_swap": percentiles(before),
            "embeds": len(loads), "embeds_non2xx": sum(s // 100 != 2 for s in loads)}


def plot(result: dict, out: Path) -> None:
    """Answers per second through each hey run's swap, the SIGHUP marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for n, run in enumerate(result["hey_swap"]):
        rate = np.asarray(run["answers_per_bin"]) / BIN_S
        ax.step(np.arange(len(rate)) * BIN_S, rate, where="post", label=f"round {n + 1}")
        ax.axvline(run["sighup_at_s"], color=f"C{n}", ls=":", lw=1)
    ax.set(xlabel="seconds into the run (dotted: SIGHUP)", ylabel="answers / s",
           title=f"{CLIENTS} clients through a model swap ({' -> '.join(result['bundles'])})")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


QUICK = {"rounds": 1, "seconds": 2, "out": "benchmarks/results/quick/model_swap.json"}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundles", nargs=2, type=Path, required=True, metavar=("A", "B"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=12)
    p.add_argument("--freeze", type=int, default=0, metavar="N", help="only the freeze "
                   "measurement, with N vectors in the gallery")
    p.add_argument("--out", default=None)


def run(args: argparse.Namespace) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    a, b = args.bundles
    body = EXAMPLE.read_bytes()
    if args.freeze:
        with tempfile.TemporaryDirectory() as tmp:
            rounds = [freeze_round(a, b, Path(tmp), args.freeze, body)
                      for _ in range(args.rounds)]
        result = {"benchmark": "model_swap --freeze", "hardware": hardware(),
                  "bundles": [a.name, b.name], "rounds": rounds,
                  "healthz_max_ms_during_swap": [r["healthz_during_swap"]["max_ms"]
                                                 for r in rounds]}
        out = args.out or "benchmarks/results/swap_freeze.json"
        log.info("wrote %s", write_result(out, result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        png = work / "q.png"
        png.write_bytes(body)
        memory, baseline, swaps, hey_swaps = [], [], [], []
        for n in range(args.rounds):
            log.info("round %d: memory", n + 1)
            memory.append(memory_round(a, b, work, body))
            live = Live(a, work)
            try:
                warm(live.srv, body)
                log.info("round %d: wrk without a swap, then through one", n + 1)
                baseline.append(wrk_run(live.srv.url, png, args.seconds))
                swaps.append(wrk_run(live.srv.url, png, args.seconds,
                                     lambda live=live: live.swap_to(b)))
            finally:
                live.srv.stop()
            live = Live(a, work)
            try:
                warm(live.srv, body)
                hey_swaps.append(hey_swap(live, b, png, args.seconds))
            finally:
                live.srv.stop()
    extra = [m["two_models"] - m["one_model"] for m in memory]
    result = {"benchmark": "model_swap", "hardware": hardware(), "clients": CLIENTS,
              "seconds": args.seconds, "rounds": args.rounds,
              "bundles": [a.name, b.name], "memory_mb": memory,
              "extra_model_mb_median": statistics.median(extra),
              "wrk_baseline": baseline, "wrk_swap": swaps, "hey_swap": hey_swaps,
              "non2xx_during_swaps": sum(r["non2xx"] + r["failed"] for r in swaps)
              + sum(r["non2xx"] for r in hey_swaps)}
    out = args.out or "benchmarks/results/model_swap.json"
    log.info("wrote %s", write_result(out, result))
    plot(result, Path(out).with_suffix(".png"))
