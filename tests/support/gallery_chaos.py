"""Shared by the SQLite and PostgreSQL gallery tests: concurrent adds and deletes against real
servers, a kill -9 at a random instant, and the check that every acknowledged change is there
after a restart and nothing deleted came back."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np

from simclr_embed.service.gallery import Gallery
from tests.support.servers import API_KEY, ServiceProcess

KEY = {"x-api-key": API_KEY}


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def settle(g: Gallery) -> Gallery:
    """`g` once the rebuilds it started (a rebuild may start the next) have finished."""
    while (rebuild := g.rebuilding) is not None:
        rebuild.join()
    return g


class Ledger:
    """What the servers acknowledged: ids added (and not deleted since) and ids deleted."""

    def __init__(self) -> None:
        self.present: dict[str, list[float]] = {}
        self.deleted: set[str] = set()
        self.unexpected: list[str] = []  # answers other than 200 or a 503 refusal: a bug
        self.lock = threading.Lock()

    def answered(self, what: str, status: int) -> bool:
        """Whether the change was acknowledged; anything but 200 or 503 is noted."""
        if status not in (200, 503):
            with self.lock:
                self.unexpected.append(f"{what}: {status}")
        return status == 200


def writer(urls: list[str], ledger: Ledger, prefix: str, stop: threading.Event,
           seed: int) -> None:
    """Adds two items per request, and deletes one it added, until stopped or refused."""
    rng = random.Random(seed)
    n = 0
    with httpx.Client(timeout=10) as c:
        while not stop.is_set():
            url = rng.choice(urls)
            ids = [f"{prefix}/{n}", f"{prefix}/{n + 1}"]
            vecs = unit(2, seed * 100_000 + n)
            n += 2
            body = {"items": [{"id": i, "embedding": v.tolist()}
                              for i, v in zip(ids, vecs, strict=True)]}
            try:
                status = c.post(url + "/v1/gallery", json=body, headers=KEY).status_code
                if not ledger.answered(f"add {ids}", status):
                    continue
            except httpx.HTTPError:  # killed under us: unacknowledged, no claim either way
                time.sleep(0.05)
                continue
            with ledger.lock:
                for i, v in zip(ids, vecs, strict=True):
                    ledger.present[i] = v.tolist()
            victim = ids[0]
            try:
                ok = ledger.answered(f"delete {victim}", c.delete(
                    f"{url}/v1/gallery/{victim}", headers=KEY).status_code)
            except httpx.HTTPError:  # the delete may or may not have committed
                ok = None
                time.sleep(0.05)
            with ledger.lock:
                if ok is not False:
                    ledger.present.pop(victim, None)
                if ok:
                    ledger.deleted.add(victim)


def chaos_rounds(start: Callable[[], list[ServiceProcess]], rounds: int, seed: int = 0) -> Ledger:
    """Each round: servers up, 3 writers for a random 0.3-1.5 s, kill -9 one server (all when
    there is only one), writers stop; the next round starts the servers again."""
    ledger, rng = Ledger(), random.Random(seed)
    for r in range(rounds):
        servers = start()
        urls = [s.url for s in servers]
        stop = threading.Event()
        threads = [threading.Thread(target=writer, args=(urls, ledger, f"r{r}w{w}", stop,
                                                         seed + 10 * r + w), daemon=True)
                   for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.5))
        victim = rng.choice(servers)
        victim.proc.send_signal(signal.SIGKILL)  # mid-request, mid-commit: anywhere
        victim.proc.wait()
        stop.set()
        for t in threads:
            t.join()
        for s in servers:
            s.stop(signal.SIGKILL)
    return ledger


def check_ledger(url: str, ledger: Ledger) -> None:
    """Every acknowledged add is there with its vector; every acknowledged delete is gone."""
    assert len(ledger.present) > 20, "the writers barely wrote: the test proves nothing"
    assert not ledger.unexpected, ledger.unexpected[:10]
    with httpx.Client(base_url=url, timeout=30) as c:
        for id_, vec in ledger.present.items():
            r = c.get(f"/v1/gallery/{id_}")
            assert r.status_code == 200, f"acknowledged add {id_} lost"
            np.testing.assert_allclose(r.json()["embedding"], vec, atol=1e-6)
        for id_ in ledger.deleted:
            assert c.get(f"/v1/gallery/{id_}").status_code == 404, f"deleted {id_} came back"
        some = list(ledger.present.items())[:10]
        hits = c.post("/v1/search", json={"embeddings": [v for _, v in some], "k": 1}).json()
        assert [row[0]["id"] for row in hits["results"]] == [i for i, _ in some]
