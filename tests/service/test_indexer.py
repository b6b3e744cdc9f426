"""`simclr-embed index` and `simclr-embed search` on real CIFAR-10 JPEGs plus damaged files:
idempotent reruns, kill -9 then rerun, a running server that sees the new items, manifests with
metadata, archives, PostgreSQL."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from simclr_embed.service.bundle import load_bundle, model_id
from simclr_embed.service.gallery import Gallery, SQLiteStore
from simclr_embed.service.indexer import IndexingError, IndexJob, run_index
from simclr_embed.service.settings import Settings
from simclr_embed.service.store import Filter, Space
from tests.support.servers import API_KEY, Server

BAD = {"airplane/truncated.jpg": "cannot decode", "airplane/empty.jpg": "empty image",
       "cat/notes.txt": "no format Pillow reads", "cat/noise.png": "byte limit"}


def extract(cifar10_dir: Path, dest: Path, per_class: int, classes: tuple[str, ...]) -> Path:
    """per_class real test JPEGs of each class into dest/<class>/<name>.jpg."""
    want = {c: per_class for c in classes}
    with tarfile.open(cifar10_dir / "test.tar.gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) == 3 and want.get(parts[1], 0) > 0:
                want[parts[1]] -= 1
                out = dest / parts[1] / parts[2]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
            if not any(want.values()):
                break
    return dest


@pytest.fixture
def folder(cifar10_dir: Path, tmp_path: Path) -> Path:
    """60 good JPEGs of two classes and four bad files (BAD)."""
    root = extract(cifar10_dir, tmp_path / "photos", 30, ("airplane", "cat"))
    good = next((root / "airplane").glob("*.jpg")).read_bytes()
    (root / "airplane/truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "airplane/empty.jpg").write_bytes(b"")
    (root / "cat/notes.txt").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)
    Image.fromarray(noise).save(root / "cat/noise.png")  # ~120 KB, over the 64 KiB below
    (root / ".DS_Store").write_bytes(b"\0")  # hidden: not listed at all
    return root


def settings_for(bundle: Path, data: Path, **extra) -> Settings:
    """One runtime pinned (provider=auto may time its way to either in two data dirs)."""
    return Settings(bundle=bundle, data_dir=data, threads=1, max_body_bytes=64 * 1024,
                    provider="cpu", **extra)


def live_ids(data: Path) -> list[str]:
    with sqlite3.connect(data / "gallery-int8.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT id FROM items WHERE embedding IS NOT NULL")]


def test_folder_rerun_change_and_prune(bundle_dir: Path, folder: Path, tmp_path: Path) -> None:
    s = settings_for(bundle_dir, tmp_path / "data")
    report = run_index(IndexJob(folder, report=tmp_path / "r1.json"), s)
    assert (report["files"], report["indexed"], report["skipped"]) == (64, 60, 4)
    reasons = {f["id"]: f["reason"] for f in report["skipped_files"]}
    assert set(reasons) == set(BAD)
    for id_, words in BAD.items():
        assert words in reasons[id_], reasons[id_]
    assert json.loads((tmp_path / "r1.json").read_text())["indexed"] == 60
    assert sorted(live_ids(tmp_path / "data")) == sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")
        if p.relative_to(folder).as_posix() not in BAD)

    again = run_index(IndexJob(folder, report=None), s)
    assert (again["embedded"], again["unchanged"], again["indexed"]) == (4, 60, 0)

    changed, gone = sorted((folder / "cat").glob("*.jpg"))[:2]
    changed.write_bytes(next((folder / "airplane").glob("00*.jpg")).read_bytes())
    gone.unlink()
    kept = run_index(IndexJob(folder, report=None), s)
    assert (kept["indexed"], kept["pruned"]) == (1, 0)
    assert gone.relative_to(folder).as_posix() in live_ids(tmp_path / "data")
    pruned = run_index(IndexJob(folder, prune=True, report=None), s)
    assert (pruned["indexed"], pruned["pruned"]) == (0, 1)
    assert len(live_ids(tmp_path / "data")) == 59


def test_labels_vectors_and_archive_match_the_folder(bundle_dir: Path, folder: Path,
                                                     tmp_path: Path) -> None:
    s = settings_for(bundle_dir, tmp_path / "a")
    run_index(IndexJob(folder, report=None), s)
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="photos")
    t = settings_for(bundle_dir, tmp_path / "b")
    assert run_index(IndexJob(archive, report=None), t)["indexed"] == 60
    space = space_of(bundle_dir)
    a = SQLiteStore(tmp_path / "a/gallery-int8.sqlite3", space)
    b = SQLiteStore(tmp_path / "b/gallery-int8.sqlite3", space)
    rows_a = {r[0]: r for r in a.changes_since(0)}
    rows_b = {r[0]: r for r in b.changes_since(0)}
    assert rows_a.keys() == rows_b.keys()
    for id_, row in rows_a.items():
        assert row[1] == id_.split("/")[0]  # the label is the first folder level
        assert row[2] == rows_b[id_][2]  # the same bytes decode and embed alike
    a.close()
    b.close()


def space_of(bundle: Path) -> Space:
    m = load_bundle(bundle).manifest
    return Space(model_id(m), "int8", int(m["embedding_dim"]))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_metadata_becomes_filterable(bundle_dir: Path, folder: Path, tmp_path: Path,
                                              kind: str) -> None:
    files = sorted(folder.glob("*/*.jpg"))
    rows = [{"path": str(p.relative_to(tmp_path)), "id": f"sku-{n}", "label": p.parent.name,
             "color": "red" if n % 3 == 0 else "blue"} for n, p in enumerate(files)]
    manifest = tmp_path / f"m.{kind}"
    if kind == "csv":
        header = list(rows[0])
        manifest.write_text(",".join(header) + "\n" + "".join(
            ",".join(str(r[h]) for h in header) + "\n" for r in rows))
    else:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = run_index(IndexJob(manifest, report=None), settings_for(bundle_dir,
                                                                    tmp_path / "d"))
    assert report["indexed"] == sum(r["path"].split("/")[-1] not in ("truncated.jpg",
                                                                     "empty.jpg") for r in rows)
    g = Gallery(space_of(bundle_dir), tmp_path / "d/gallery-int8.sqlite3")
    g.load([], [], np.zeros((0, int(load_bundle(bundle_dir).manifest["embedding_dim"])),
                            np.float32))
    label, vec, meta = g.get("sku-3")
    assert (label, meta) == (rows[3]["label"], {"color": "red"})
    hits = g.search(vec[None], 10, Filter.of(None, {"color": "red"}))[0]
    assert hits and all(h.metadata == {"color": "red"} for h in hits)
    assert hits[0].id == "sku-3"
    g.close()


def test_bad_sources_and_another_models_shared_gallery(bundle_dir: Path, folder: Path,
                                                tmp_path: Path) -> None:
    s = settings_for(bundle_dir, tmp_path / "d")
    with pytest.raises(IndexingError, match="not an image folder"):
        run_index(IndexJob(tmp_path / "missing", report=None), s)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/a.jpg").write_bytes(b"")
    with pytest.raises(IndexingError, match="none of the 1 files"):
        run_index(IndexJob(tmp_path / "junk", report=None), s)
    # A data directory whose shared gallery another model made: this model's gallery is its
    # own folder there, as the server would open it, and the other one is left as it was.
    other = Space("another-model", "int8", space_of(bundle_dir).dim)
    SQLiteStore(tmp_path / "o/gallery-int8.sqlite3", other).close()
    report = run_index(IndexJob(folder, report=None), settings_for(bundle_dir, tmp_path / "o"))
    assert report["indexed"] > 0
    assert count(tmp_path / "o/gallery-int8.sqlite3") == 0
    assert count(tmp_path / "o" / report["model"] / "gallery-int8.sqlite3") == report["indexed"]


def index_cli(source: Path, bundle: Path, data: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SIMCLR_EMBED_THREADS": "1", "SIMCLR_EMBED_MAX_BODY_BYTES": "65536",
           "SIMCLR_EMBED_PROVIDER": "cpu"}  # as the test servers
    return subprocess.Popen([sys.executable, "-m", "simclr_embed.cli", "index", str(source),
                             "--bundle", str(bundle), "--data-dir", str(data), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def count(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=10) as c:
        try:
            return c.execute("SELECT count(*) FROM items WHERE embedding IS NOT NULL"
                             ).fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_rerun(bundle_dir: Path, cifar10_dir: Path,
                                              tmp_path: Path) -> None:
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse")
    root = extract(cifar10_dir, tmp_path / "many", 250, classes)  # 2,000 files
    data, db = tmp_path / "data", tmp_path / "data/gallery-int8.sqlite3"
    proc = index_cli(root, bundle_dir, data, "--report", "")
    # Somewhere in the run, after a commit; seeded, so that a failure can be run again.
    stop_at = random.Random(39).randint(1, 1500)
    while proc.poll() is None and count(db) < stop_at:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < count(db) < 2000, proc.stdout.read().decode()[-2000:]
    done = index_cli(root, bundle_dir, data, "--report", str(tmp_path / "r.json"))
    out = done.communicate(timeout=300)[0].decode()
    assert done.returncode == 0, out[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["unchanged"] + report["indexed"] == 2000
    ids = live_ids(data)
    assert len(ids) == len(set(ids)) == 2000


def test_a_running_server_sees_indexed_items_and_search_prints_them(
        bundle_dir: Path, folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = Server(bundle_dir, data).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            before = c.get("/v1/gallery").json()["size"]
            proc = index_cli(folder, bundle_dir, data, "--report", "")
            out = proc.communicate(timeout=300)[0].decode()
            assert proc.returncode == 0, out[-2000:]
            assert c.get("/v1/gallery").json()["size"] == before + 60  # no restart
            query = sorted((folder / "cat").glob("*.jpg"))[0]
            served = c.post("/v1/embed", files={"file": query.read_bytes()},
                            headers={"Authorization": f"Bearer {API_KEY}"}).json()
            stored = np.asarray(c.get(f"/v1/gallery/cat/{query.name}").json()["embedding"])
            assert float(np.dot(served["embeddings"][0], stored)) > 0.9999
        shell = subprocess.run([sys.executable, "-m", "simclr_embed.cli", "search", str(query),
                                "--k", "3", "--url", srv.url], capture_output=True, text=True,
                               timeout=60)
        assert shell.returncode == 0, shell.stderr
        first = shell.stdout.splitlines()[2].split()
        assert first[0] == "1" and first[2:] == ["cat", f"cat/{query.name}"]
        assert float(first[1]) > 0.999
        gone = subprocess.run([sys.executable, "-m", "simclr_embed.cli", "search", str(query),
                               "--url", "http://127.0.0.1:9"], capture_output=True, text=True)
        assert gone.returncode == 2 and "cannot reach" in gone.stderr
    finally:
        srv.stop()


def test_postgresql_target_is_idempotent(bundle_dir: Path, folder: Path, tmp_path: Path,
                                         pg_url: str) -> None:
    s = settings_for(bundle_dir, tmp_path / "unused", gallery_url=pg_url)
    assert run_index(IndexJob(folder, report=None), s)["indexed"] == 60
    again = run_index(IndexJob(folder, prune=True, report=None), s)
    assert (again["indexed"], again["unchanged"], again["pruned"]) == (0, 60, 0)
    import psycopg

    from simclr_embed.service.pg_gallery import table_name

    with psycopg.connect(pg_url) as db:
        n = db.execute(f"SELECT count(*) FROM {table_name(space_of(bundle_dir))} "
                       "WHERE origin IS NOT NULL").fetchone()[0]
    assert n == 60
    bad = settings_for(bundle_dir, tmp_path / "unused",
                       gallery_url="postgresql://nobody@127.0.0.1:9/none")
    from simclr_embed.service.errors import StorageError

    with pytest.raises(StorageError, match="cannot reach"):
        run_index(IndexJob(folder, report=None), bad)


@pytest.mark.slow
def test_parquet_manifest_and_ray_equal_the_plain_run(bundle_dir: Path, folder: Path,
                                                      tmp_path: Path) -> None:
    """The Ray Data job on a local instance (num_cpus=2) writes the plain run's vectors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*/*.jpg"))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [str(p) for p in files],
                             "shelf": [n % 4 for n in range(len(files))]}), manifest)
    plain = run_index(IndexJob(manifest, report=None), settings_for(bundle_dir, tmp_path / "p"))
    on_ray = run_index(IndexJob(manifest, report=None, ray="local"),
                       settings_for(bundle_dir, tmp_path / "r"))
    assert plain["indexed"] == on_ray["indexed"] == 60
    assert {f["id"] for f in on_ray["skipped_files"]} == {
        f["id"] for f in plain["skipped_files"]}
    space = space_of(bundle_dir)
    rows = {}
    for name in ("p", "r"):
        store = SQLiteStore(tmp_path / name / "gallery-int8.sqlite3", space)
        rows[name] = {r[0]: (np.frombuffer(r[2], np.float32), r[4])
                      for r in store.changes_since(0)}
        store.close()
    assert rows["p"].keys() == rows["r"].keys()
    for id_, (vec, meta) in rows["p"].items():
        other, other_meta = rows["r"][id_]
        assert float(np.dot(vec, other)) >= 0.9999
        assert meta == other_meta and json.loads(meta)["shelf"] in range(4)
    with pytest.raises(IndexingError, match="extract the archive"):
        archive = tmp_path / "a.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname="photos")
        run_index(IndexJob(archive, report=None, ray="local"), settings_for(bundle_dir,
                                                                      tmp_path / "a"))


def test_a_multipart_gallery_add_is_told_the_json_form_and_the_indexer(client) -> None:
    r = client.post("/v1/gallery", files={"file": b"\x89PNG"},
                    headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 415
    message = r.json()["error"]["message"]
    assert '"image": "<base64 or data URL>"' in message and "simclr-embed index" in message


def test_index_after_a_swap_writes_the_gallery_the_new_model_serves(
        bundle_dir: Path, second_bundle_dir: Path, cifar10_dir: Path, tmp_path: Path) -> None:
    """A server swaps its bundle for new weights (SIGHUP): the new model's gallery is
    DATA_DIR/<id>/ (service/gallery.py, gallery_path). `index` finds it through the same
    function, so each indexed image comes back from the server as its own first hit; and
    --model picks a served model by bundle name, refusing one it does not serve."""
    live, data = tmp_path / "live" / "model", tmp_path / "data"
    shutil.copytree(bundle_dir, live)
    photos = extract(cifar10_dir, tmp_path / "photos", 4, ("ship", "truck"))
    srv = Server(live, data).start()
    try:
        first = httpx.get(srv.url + "/v1/model").json()["model"]
        staged = live.with_name("staged")
        shutil.copytree(second_bundle_dir, staged)
        live.rename(live.with_name("old"))
        staged.rename(live)
        os.kill(srv.pid, signal.SIGHUP)
        deadline = time.monotonic() + 120  # bounds a hang only
        while (new := httpx.get(srv.url + "/v1/model").json()["model"]) == first:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        s = settings_for(live, data)
        with pytest.raises(IndexingError, match="'nope' is not served"):
            run_index(IndexJob(photos, report=None, model="nope"), s)
        report = run_index(IndexJob(photos, report=None, model="model"), s)
        assert report["indexed"] == 8 and report["model"] == new
        assert (data / new / "gallery-int8.sqlite3").exists()
        for image in sorted(photos.rglob("*.jpg")):
            r = httpx.post(srv.url + "/v1/search?k=1", content=image.read_bytes(),
                           headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            hit = r.json()["results"][0][0]
            assert hit["id"] == image.relative_to(photos).as_posix(), hit
    finally:
        srv.stop()
