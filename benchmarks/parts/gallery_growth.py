"""A gallery that grows through the API, as a user grows one: a real server (default settings)
on the bundle's 50,000-vector gallery, 150,000 more vectors added through `POST /v1/gallery`
(64 a request, 4 clients), then 20,000 deleted in batches of 1,000 while searches go on, then a
restart. At each step: the index kind and size (`/v1/model`), search by embedding p50/p95/p99
over HTTP beside `/healthz` (the difference is what search costs), recall@10 against exact
search over the same vectors, a filter matching ~1 % of the gallery, RSS, and the restart time
from process start to `/readyz`.

Added vectors are the bundle's own embeddings with noise (sigma 0.05, renormalized), so they
keep its cluster structure; queries are stored vectors with a little noise (sigma 0.01). With
--random they are random unit vectors instead (no cluster structure: the hard case for HNSW,
where recall has to be measured and held, #39). Each step also searches 1,000 stored vectors
with k=1: how many come back as their own first hit, and what `/v1/model` says of the recall.

    python -m benchmarks.gallery growth --bundle bundles/default
    python -m benchmarks.gallery growth --bundle bundles/default --random --added 200000 \
        --out benchmarks/results/gallery_growth_random.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson

from simclr_embed.benchmarks.harness import hardware, percentiles, write_result
from simclr_embed.benchmarks.process import ServiceProcess
from simclr_embed.service.bundle import load_bundle

log = logging.getLogger("gallery_growth")
KEY = "bench-key"


def post(c: httpx.Client, path: str, body: dict) -> httpx.Response:
    return c.post(path, content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                  headers={"content-type": "application/json", "x-api-key": KEY})


def add_all(url: str, ids: list[str], labels: list[str], emb: np.ndarray) -> float:
    """Adds in requests of 64 from 4 clients; returns vectors/s."""
    chunks = list(range(0, len(ids), 64))
    t0 = time.perf_counter()

    def worker(part: list[int]) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            for s in part:
                items = [{"id": i, "label": lab, "embedding": v}
                         for i, lab, v in zip(ids[s:s + 64], labels[s:s + 64], emb[s:s + 64],
                                              strict=True)]
                r = post(c, "/v1/gallery", {"items": items})
                r.raise_for_status()

    threads = [threading.Thread(target=worker, args=(chunks[w::4],)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ids) / (time.perf_counter() - t0)


def searches(c: httpx.Client, queries: np.ndarray, k: int = 10, filt: dict | None = None,
             base: list[float] | None = None) -> tuple[list[float], list[list[str]]]:
    """Search times (ms) and hit ids; with `base`, a /healthz after each search goes into it, so
    that the two are paired in time and drift cancels out of their difference."""
    times, ids = [], []
    for q in queries:
        body = {"embeddings": [q], "k": k, **({"filter": filt} if filt else {})}
        t0 = time.perf_counter()
        r = post(c, "/v1/search", body)
        times.append((time.perf_counter() - t0) * 1000)
        ids.append([h["id"] for h in r.json()["results"][0]])
        if base is not None:
            t0 = time.perf_counter()
            c.get("/healthz")
            base.append((time.perf_counter() - t0) * 1000)
    return times, ids


def exact(all_ids: np.ndarray, emb: np.ndarray, live: np.ndarray, queries: np.ndarray,
          k: int = 10) -> list[set[str]]:
    sims = queries @ emb.T
    sims[:, ~live] = -np.inf
    return [set(all_ids[np.argsort(-row)[:k]]) for row in sims]


def recall(got: list[list[str]], want: list[set[str]]) -> float:
    return float(np.mean([len(set(g) & w) / len(w) for g, w in zip(got, want, strict=True)]))


def wait_quiet(srv: ServiceProcess, timeout: float = 600) -> float:
    """Until the server's background work (a rebuild, a snapshot) is done: under 5 % of a core
    for half a second. Returns the seconds waited."""
    t0 = time.perf_counter()
    used = sum(srv.cpu_seconds().values())
    while time.perf_counter() - t0 < timeout:
        time.sleep(0.5)
        now = sum(srv.cpu_seconds().values())
        if now - used < 0.025:
            break
        used = now
    return time.perf_counter() - t0


def step(name: str, srv: ServiceProcess, c: httpx.Client, all_ids, emb, live, labels,
         queries) -> dict:
    quiet_after_s = wait_quiet(srv)
    model = c.get("/v1/model").json()
    healthz: list[float] = []
    times, got = searches(c, queries, base=healthz)
    want = exact(all_ids, emb, live, queries)
    rare = live & (labels == "c7")
    f_times, f_got = searches(c, queries[:50], filt={"label": "c7"})
    f_want = exact(all_ids, emb, rare, queries[:50])
    base = percentiles(healthz)
    out = {"step": name, "quiet_after_s": quiet_after_s, "index": model["gallery_index"],
           "size": model["gallery_size"], "gallery_recall": model.get("gallery_recall"),
           "self_hit_k1": self_hits(c, all_ids, emb, live),
           "search": percentiles(times), "healthz": base,
           "search_over_healthz_p50_ms": percentiles(times)["p50_ms"] - base["p50_ms"],
           # Each search minus the /healthz right after it: drift within the step cancels.
           "search_over_healthz_paired_p50_ms": float(np.median(np.subtract(times, healthz))),
           "recall_at_10": recall(got, want),
           "filter_fraction": float(rare.sum() / live.sum()),
           "filtered_search": percentiles(f_times),
           "filtered_recall_at_10": recall(f_got, f_want),
           "filtered_all_match": all(i in set(all_ids[rare]) for row in f_got for i in row),
           "rss_mb": srv.rss_mb()}
    log.info("%s: %s", name, {k: v for k, v in out.items() if not isinstance(v, dict)})
    return out


def self_hits(c: httpx.Client, all_ids: np.ndarray, emb: np.ndarray, live: np.ndarray,
              n: int = 1000) -> dict:
    """Stored vectors searched with k=1 (64 a request): the fraction that find themselves."""
    rows = np.random.default_rng(5).choice(np.flatnonzero(live), min(n, int(live.sum())),
                                           replace=False)
    found = 0
    for s in range(0, len(rows), 64):
        part = rows[s:s + 64]
        r = post(c, "/v1/search", {"embeddings": emb[part], "k": 1})
        found += sum(row[0]["id"] == all_ids[i] for row, i in zip(r.json()["results"], part,
                                                                    strict=True))
    return {"n": len(rows), "found": int(found), "fraction": found / len(rows)}


def wait_index(c: httpx.Client, kind: str, timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    while c.get("/v1/model").json()["gallery_index"] != kind:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"index never became {kind}")
        time.sleep(1)
    return time.perf_counter() - t0


def grow(bundle_dir: Path, added: int, deleted: int, keep: Path | None = None,
        pg_url: str | None = None, random: bool = False) -> dict:
    bundle = load_bundle(bundle_dir)
    b_ids, b_labels, b_emb = bundle.gallery("int8")
    classes = bundle.classes
    rng = np.random.default_rng(0)
    if random:
        new = rng.standard_normal((added, b_emb.shape[1])).astype(np.float32)
    else:
        src = b_emb[rng.integers(0, len(b_emb), added)]
        new = src + rng.normal(0, 0.05, src.shape).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    new_ids = [f"added/{n}" for n in range(added)]
    new_labels = [f"c{n % 100}" for n in range(added)]  # each label ~1 % of what is added
    all_ids = np.array([*b_ids.tolist(), *new_ids])
    labels = np.array([*(classes[y] for y in b_labels.tolist()), *new_labels])
    emb = np.concatenate([b_emb, new]).astype(np.float32)
    live = np.ones(len(all_ids), bool)
    pick = rng.integers(0, len(emb), 300)
    queries = emb[pick] + rng.normal(0, 0.01, (300, emb.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    steps, events = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = keep or scratch  # kept: the data directory and the server's log, to look into
        env = {"SIMCLR_EMBED_API_KEY": KEY,
               **({"SIMCLR_EMBED_GALLERY_URL": pg_url} if pg_url else {})}
        srv = ServiceProcess(bundle_dir, Path(tmp) / "data", Path(tmp) / "server.log",
                             **env).start()
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            live[len(b_ids):] = False
            steps.append(step("bundle", srv, c, all_ids, emb, live, labels, queries))
            events["add_vectors_per_s"] = add_all(srv.url, new_ids, new_labels, new)
            live[:] = True
            if not random:  # random vectors may be served exactly (service/recall.py)
                events["hnsw_ready_after_adds_s"] = wait_index(c, "pgvector-hnsw" if pg_url
                                                               else "hnsw")
            steps.append(step(f"+{added} added", srv, c, all_ids, emb, live, labels, queries))
            gone = rng.choice(np.arange(len(b_ids), len(all_ids)), deleted, replace=False)
            events.update(delete_under_searches(c, all_ids[gone].tolist(), queries))
            live[gone] = False
            steps.append(step(f"-{deleted} deleted", srv, c, all_ids, emb, live, labels,
                              queries))
            returned = {i for row in searches(c, queries)[1] for i in row}
            events["deleted_ids_returned"] = len(returned & set(all_ids[gone].tolist()))
        restarts = []
        for _ in range(3):
            srv.stop()
            t0 = time.perf_counter()
            srv.start()
            restarts.append(time.perf_counter() - t0)
        events["restart_to_readyz_s"] = {"runs": restarts, "median": float(np.median(restarts))}
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            steps.append(step("after restart", srv, c, all_ids, emb, live, labels, queries))
        srv.stop()
    return {"steps": steps, "events": events}


def delete_under_searches(c: httpx.Client, ids: list[str], queries: np.ndarray) -> dict:
    stop, lat = threading.Event(), []

    def searcher() -> None:
        with httpx.Client(base_url=str(c.base_url), timeout=120) as s:
            while not stop.is_set():
                lat.extend(searches(s, queries[:20])[0])

    t = threading.Thread(target=searcher)
    t.start()
    batch_s = []
    for s in range(0, len(ids), 1000):
        t0 = time.perf_counter()
        post(c, "/v1/gallery/delete", {"ids": ids[s:s + 1000]}).raise_for_status()
        batch_s.append(time.perf_counter() - t0)
    stop.set()
    t.join()
    return {"delete_1000_ids_s": percentiles([x * 1000 for x in batch_s]),
            "search_during_deletes": percentiles(lat)}


# Random vectors: a gallery this small may well be served exactly, and only bundle-like vectors
# wait for the HNSW index.
QUICK = {"added": 1000, "deleted": 100, "random": True,
         "out": Path("benchmarks/results/quick/gallery_growth.json")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--added", type=int, default=150_000)
    p.add_argument("--deleted", type=int, default=20_000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gallery_growth.json"))
    p.add_argument("--keep", type=Path, help="keep the data directory and server log here")
    p.add_argument("--random", action="store_true", help="added vectors are random unit "
                   "vectors, not the bundle's with noise")
    p.add_argument("--pg", action="store_true",
                   help="the gallery in PostgreSQL + pgvector (a pgserver instance started here)")


def run(args: argparse.Namespace) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres()) if args.pg else None
        result = grow(args.bundle, args.added, args.deleted, args.keep, url, args.random)
    write_result(args.out, {"benchmark": "gallery_growth", "hardware": hardware(),
                            "store": "pgvector" if args.pg else "sqlite+faiss",
                            "added_vectors": "random" if args.random else "bundle + noise",
                            "bundle": args.bundle.name, **result})


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL 16 + pgvector server of the pgserver wheel, in a scratch directory."""
    import pgserver

    with tempfile.TemporaryDirectory() as tmp:
        srv = pgserver.get_server(tmp, cleanup_mode="stop")
        try:
            yield srv.get_uri()
        finally:
            srv.cleanup()
