"""Several models in one server and swaps without downtime: two real bundles of two real
models (other weights), real servers over real HTTP, a real SIGHUP under load."""

import base64
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.gallery_chaos import KEY, unit
from tests.support.servers import Server, ServiceProcess, metric, png


def model_ids(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]


def embed(url: str, body: bytes, model: str | None = None) -> dict:
    r = httpx.post(url + "/v1/embed", content=body, params={"model": model} if model else {},
                   headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def two(bundle_dir: Path, second_bundle_dir: Path, tmp_path_factory):
    data = tmp_path_factory.mktemp("two") / "data"
    srv = Server(bundle_dir, data, SIMCLR_EMBED_MORE_BUNDLES=str(second_bundle_dir)).start()
    yield srv, data
    srv.stop()


def test_each_model_answers_for_itself(two, bundle_dir, second_bundle_dir, cifar10) -> None:
    srv, _ = two
    models = httpx.get(srv.url + "/v1/models").json()["data"]
    assert [m["bundle"] for m in models] == [bundle_dir.name, second_bundle_dir.name]
    a, b = (m["id"] for m in models)
    assert a != b
    body = png(cifar10[1].images[5])
    first, second = embed(srv.url, body, a), embed(srv.url, body, b)
    assert (first["model"], second["model"]) == (a, b)
    assert embed(srv.url, body)["model"] == a  # the first is the default
    assert embed(srv.url, body, second_bundle_dir.name)["model"] == b  # by bundle name too
    va, vb = (np.asarray(x["embeddings"][0]) for x in (first, second))
    assert float(va @ vb) < 0.99  # two models, two embedding spaces
    uri = "data:image/png;base64," + base64.b64encode(body).decode()
    openai = httpx.post(srv.url + "/v1/embeddings", json={"model": b, "input": [uri]}).json()
    assert openai["model"] == b
    np.testing.assert_allclose(openai["data"][0]["embedding"], vb, atol=1e-5)
    missing = httpx.post(srv.url + "/v1/embeddings", json={"model": "nope", "input": [uri]})
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "model" and a in missing.json()["error"]["message"]
    native = httpx.post(srv.url + "/v1/embed", params={"model": "nope"}, content=body,
                        headers={"content-type": "image/png"})
    assert native.status_code == 404 and b in native.json()["error"]["message"]
    text = httpx.get(srv.url + "/metrics").text
    for m in (a, b):
        assert metric(text, "simclr_embed_batch_size_count", f'model="{m}"') >= 1


def test_each_model_has_its_own_gallery(two) -> None:
    srv, data = two
    a, b = model_ids(srv.url)
    sizes = {m: httpx.get(srv.url + "/v1/gallery", params={"model": m}).json()["size"]
             for m in (a, b)}
    v = unit(1, seed=11)[0].tolist()
    r = httpx.post(srv.url + "/v1/gallery", params={"model": b}, headers=KEY,
                   json={"items": [{"id": "only-in-b", "embedding": v}]})
    assert r.status_code == 200, r.text
    after = {m: httpx.get(srv.url + "/v1/gallery", params={"model": m}).json()["size"]
             for m in (a, b)}
    assert after == {a: sizes[a], b: sizes[b] + 1}
    for m, found in ((a, 404), (b, 200)):
        got = httpx.get(srv.url + "/v1/gallery/only-in-b", params={"model": m})
        assert got.status_code == found
    hit = httpx.post(srv.url + "/v1/search", params={"model": b},
                     json={"embeddings": [v], "k": 1}).json()["results"][0][0]
    assert hit["id"] == "only-in-b"
    assert (data / "gallery-int8.sqlite3").exists()  # the first model's, where it always was
    assert (data / b / "gallery-int8.sqlite3").exists()


def poll(done, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout  # bounds a hang only
    while not done():
        assert time.monotonic() < deadline
        time.sleep(0.01)


class Load:
    """Clients embedding in a closed loop until stopped: every status and served model."""

    def __init__(self, url: str, body: bytes, clients: int = 8) -> None:
        self.url, self.body, self.seen = url, body, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                r = c.post("/v1/embed", content=self.body,
                           headers={"content-type": "image/png"})
                self.seen.append((r.status_code, r.json().get("model")))

    def join(self) -> list[tuple[int, str | None]]:
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.seen


def replace_bundle(live: Path, new: Path) -> None:
    """What a deployment does: the new bundle staged beside the live one, then renamed in."""
    staged = live.with_name(live.name + ".new")
    shutil.copytree(new, staged)
    live.rename(live.with_name(live.name + ".old"))
    staged.rename(live)


def live_server(bundle_dir: Path, tmp_path: Path) -> tuple[ServiceProcess, Path]:
    live = tmp_path / "live" / "model"
    shutil.copytree(bundle_dir, live)
    return Server(live, tmp_path / "data").start(), live


def test_sighup_swaps_the_model_under_load(bundle_dir, second_bundle_dir, tmp_path,
                                           cifar10) -> None:
    srv, live = live_server(bundle_dir, tmp_path)
    try:
        (a,), b = model_ids(srv.url), None
        load = Load(srv.url, png(cifar10[1].images[3]))
        poll(lambda: len(load.seen) >= 50)
        replace_bundle(live, second_bundle_dir)
        os.kill(srv.pid, signal.SIGHUP)
        poll(lambda: any(m not in (a, None) for _, m in load.seen))
        b = next(m for _, m in load.seen if m not in (a, None))
        n = len(load.seen)
        poll(lambda: len(load.seen) >= n + 50)
        seen = load.join()
        assert model_ids(srv.url) == [b]
        text = httpx.get(srv.url + "/metrics").text
        assert metric(text, "simclr_embed_model_swaps_total", 'outcome="swapped"') == 1
    finally:
        srv.stop()
    assert {s for s, _ in seen} == {200}, [s for s, _ in seen if s != 200][:5]
    served = [m for _, m in seen]
    assert set(served) == {a, b}
    assert "drained and stopped" in srv.log_path.read_text()


def test_a_bundle_that_fails_verification_is_refused(bundle_dir, second_bundle_dir,
                                                     tmp_path, cifar10) -> None:
    srv, live = live_server(bundle_dir, tmp_path)
    try:
        (a,) = model_ids(srv.url)
        body = png(cifar10[1].images[4])
        before = embed(srv.url, body)["embeddings"]
        assert httpx.post(srv.url + "/v1/models/reload").status_code == 401
        unchanged = httpx.post(srv.url + "/v1/models/reload", headers=KEY)
        assert unchanged.json()["models"][0]["outcome"] == "unchanged"
        replace_bundle(live, second_bundle_dir)
        encoder = next(live.glob("*int8*.onnx"))
        encoder.write_bytes(encoder.read_bytes()[:-100])  # a copy cut short
        r = httpx.post(srv.url + "/v1/models/reload", headers=KEY)
        assert r.status_code == 409 and encoder.name in r.json()["error"]["message"], r.text
        assert model_ids(srv.url) == [a]  # the old model keeps serving, unchanged
        assert embed(srv.url, body)["embeddings"] == before
        text = httpx.get(srv.url + "/metrics").text
        assert metric(text, "simclr_embed_model_swaps_total", 'outcome="refused"') == 1
    finally:
        srv.stop()


def test_bundles_named_on_the_command_line_or_in_a_directory(bundle_dir, second_bundle_dir,
                                                              tmp_path) -> None:
    """`serve B A` serves B first (the default); a directory of bundles serves its
    subdirectories in name order."""
    env = {"SIMCLR_EMBED_API_KEY": "k", "SIMCLR_EMBED_THREADS": "1",
           "SIMCLR_EMBED_PROVIDER": "cpu"}
    cli = ServiceProcess(bundle_dir, tmp_path / "cli", tmp_path / "cli.log",
                         module=f"simclr_embed.cli serve {second_bundle_dir} {bundle_dir}",
                         **env).start()
    try:
        by_cli = httpx.get(cli.url + "/v1/models").json()["data"]
    finally:
        cli.stop()
    assert [m["bundle"] for m in by_cli] == [second_bundle_dir.name, bundle_dir.name]
    folder = tmp_path / "bundles"
    folder.mkdir()
    (folder / "1-second").symlink_to(second_bundle_dir)
    (folder / "2-first").symlink_to(bundle_dir)
    (folder / "notes").mkdir()  # not a bundle: no manifest
    srv = ServiceProcess(folder, tmp_path / "dir", tmp_path / "dir.log", **env).start()
    try:
        by_dir = httpx.get(srv.url + "/v1/models").json()["data"]
    finally:
        srv.stop()
    assert [m["bundle"] for m in by_dir] == ["1-second", "2-first"]
    assert [m["id"] for m in by_dir] == [m["id"] for m in by_cli]


def test_sighup_swaps_in_every_worker_and_a_bad_bundle_stops_none(bundle_dir,
                                                                   second_bundle_dir,
                                                                   tmp_path, cifar10) -> None:
    """`serve --workers 2`: SIGHUP to the server goes on to each worker. A bundle cut short is
    refused by both, and the server keeps serving the old model (uvicorn's own supervisor
    would restart the workers and stop when they fail); a good one is swapped in by both,
    under load, every answer a 200."""
    live = tmp_path / "live" / "model"
    shutil.copytree(bundle_dir, live)
    srv = Server(live, tmp_path / "data", SIMCLR_EMBED_WORKERS="2").start()
    try:
        (a,) = model_ids(srv.url)
        poll(lambda: srv.log_path.read_text().count("engine ready") == 2)
        replace_bundle(live, second_bundle_dir)
        encoder = next(live.glob("*int8*.onnx"))
        good = encoder.read_bytes()
        encoder.write_bytes(good[:-100])
        os.kill(srv.pid, signal.SIGHUP)
        load = Load(srv.url, png(cifar10[1].images[6]))
        poll(lambda: srv.log_path.read_text().count("refused") == 2)
        encoder.write_bytes(good)
        os.kill(srv.pid, signal.SIGHUP)
        poll(lambda: srv.log_path.read_text().count("drained and stopped") == 2)
        n = len(load.seen)
        poll(lambda: len(load.seen) >= n + 50)
        seen = load.join()
        after = {m for _ in range(20) for m in model_ids(srv.url)}
    finally:
        srv.stop()
    assert {s for s, _ in seen} == {200}
    assert a in {m for _, m in seen} and len(after) == 1 and a not in after


EARLY_SIGHUP = """
import asyncio, os, signal, sys
from pathlib import Path
from simclr_embed.service.app import create_app
from simclr_embed.service.settings import Settings
from tests.support.servers import metric

app = create_app(Settings(bundle=Path(sys.argv[1]), data_dir=Path(sys.argv[2]), threads=1,
                          provider="cpu"))
os.kill(os.getpid(), signal.SIGHUP)  # before the lifespan has loaded anything

async def run():
    async with app.router.lifespan_context(app):
        for _ in range(2000):  # bounds a hang only
            text = app.state.metrics.exposition().decode()
            if metric(text, "simclr_embed_model_swaps_total", 'outcome="unchanged"'):
                break
            await asyncio.sleep(0.01)
        print("unchanged reloads:", metric(text, "simclr_embed_model_swaps_total",
                                           'outcome="unchanged"'))

asyncio.run(run())
"""


def test_a_sighup_while_the_models_load_is_kept_for_after(bundle_dir, tmp_path) -> None:
    """A worker still loading when SIGHUP comes (the supervisor sends it to all): the signal's
    default action would end the process; it is kept and acted on once the models are in.
    In a process of its own, as a worker is (no torch loaded: in the test process itself the
    signal crashed inside a library)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", EARLY_SIGHUP, str(bundle_dir), str(tmp_path)],
                       capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and "unchanged reloads: 1.0" in r.stdout, r.stderr[-2000:]


def test_two_bundles_of_one_model_are_refused_at_start(bundle_dir: Path, tmp_path: Path) -> None:
    """The same weights under two directory names would be two models with one id (and one
    gallery): the start is refused, naming the id."""
    import asyncio

    from simclr_embed.errors import ConfigError
    from simclr_embed.service.engine import Engine
    from simclr_embed.service.metrics import Metrics
    from simclr_embed.service.models import Models
    from simclr_embed.service.settings import Settings

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    settings, metrics = Settings(data_dir=tmp_path / "data", threads=1), Metrics()
    models = Models([bundle_dir, copy], metrics, 10, lambda d, previous: Engine(
        settings, metrics, bundle_dir=d, previous=previous))

    async def run() -> None:
        try:
            with pytest.raises(ConfigError, match="two bundles share the model id"):
                await models.start()
        finally:
            await models.stop()

    asyncio.run(run())
