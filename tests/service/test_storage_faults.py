"""Damaged state against real servers and a real SQLite file: a full disk (a small tmpfs the
test mounts), a WAL cut or deleted after a kill -9, a database emptied or overwritten, the WAL
checkpointed at SIGTERM, and the online backup."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.gallery_chaos import unit
from tests.support.servers import API_KEY, Server, metric

KEY = {"x-api-key": API_KEY}
DB = "gallery-int8.sqlite3"


def add(url: str, start: int, n: int, client: httpx.Client | None = None) -> httpx.Response:
    vecs = unit(n, start)
    body = {"items": [{"id": f"item/{start + i}", "embedding": v.tolist()}
                      for i, v in enumerate(vecs)]}
    return (client or httpx).post(url + "/v1/gallery", json=body, headers=KEY, timeout=30)


def added_ids(url: str) -> set[str]:
    found, after = set(), None
    while True:
        page = httpx.get(url + "/v1/gallery", params={"limit": 1000, **(
            {"after": after} if after else {})}).json()
        found |= {i["id"] for i in page["items"] if i["id"].startswith("item/")}
        if (after := page["next"]) is None:
            return found


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 3 MiB tmpfs: mounted by the test, so that the disk can really fill."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_a_507_loses_nothing_and_reads_go_on(bundle_dir, tmpfs, tmp_path):
    data = tmpfs / "data"
    srv = Server(bundle_dir, data).start()
    acked, codes = set(), []
    try:
        with httpx.Client(timeout=30) as c:
            for start in range(0, 4000, 20):  # 20 vectors of 2 KB a request: ~40 KB
                r = add(srv.url, start, 20, c)
                codes.append(r.status_code)
                if r.status_code == 200:
                    acked |= {f"item/{start + i}" for i in range(20)}
                elif len([x for x in codes if x != 200]) >= 5:
                    break
        refused = [x for x in codes if x != 200]
        assert refused and set(refused) == {507}, codes
        r = add(srv.url, 90_000, 20)
        assert r.status_code == 507 and "disk is full" in r.json()["error"]["message"]
        assert "Traceback" not in srv.log_path.read_text()
        counted = metric(httpx.get(srv.url + "/metrics").text, "simclr_embed_storage_errors_total",
                         'kind="insufficient_storage"')
        assert counted == len(refused) + 1, (counted, codes)
        assert httpx.get(srv.url + "/v1/gallery?limit=1").status_code == 200  # reads go on
        assert httpx.post(srv.url + "/v1/search", json={"embeddings": [[1.0] * 512]},
                          timeout=30).status_code == 200
        srv.stop(signal.SIGKILL)
        shutil.copytree(data, tmp_path / "moved")  # a disk with room again: nothing is lost
        srv = Server(bundle_dir, tmp_path / "moved").start()
        assert acked and acked <= added_ids(srv.url)
        assert add(srv.url, 95_000, 20).status_code == 200
    finally:
        srv.stop()


def killed_with_changes(bundle_dir: Path, data: Path, n: int = 300) -> None:
    srv = Server(bundle_dir, data).start()
    for start in range(0, n, 30):
        assert add(srv.url, start, 30).status_code == 200
    srv.stop(signal.SIGKILL)  # the changes are in the WAL, not yet in the database file


def start_fails(bundle_dir: Path, data: Path, **env: str) -> str:
    r = subprocess.run([sys.executable, "-m", "simclr_embed.cli", "serve", str(bundle_dir),
                        "--port", "0"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SIMCLR_EMBED_DATA_DIR": str(data), **env})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return r.stderr


@pytest.mark.parametrize("damage", ["wal_cut", "wal_deleted", "db_emptied", "db_deleted"])
def test_a_gallery_that_lost_acknowledged_changes_is_refused(damage, bundle_dir, tmp_path):
    data = tmp_path / "data"
    killed_with_changes(bundle_dir, data)
    db, wal = data / DB, data / (DB + "-wal")
    assert wal.stat().st_size > 0
    if damage == "wal_cut":
        os.truncate(wal, wal.stat().st_size // 2)
    elif damage == "wal_deleted":
        wal.unlink()
    elif damage == "db_emptied":
        wal.unlink()
        os.truncate(db, 0)
    else:
        for f in data.glob(DB + "*"):
            if not f.name.endswith(".seq"):
                f.unlink()
    err = start_fails(bundle_dir, data)
    assert str(db) in err and "lost committed changes" in err and "ACCEPT_GALLERY_LOSS" in err
    srv = Server(bundle_dir, data, SIMCLR_EMBED_ACCEPT_GALLERY_LOSS="true").start()
    try:  # accepted: it starts with what is left and says so
        assert len(added_ids(srv.url)) < 300
        assert "starting anyway" in srv.log_path.read_text()
    finally:
        srv.stop()
    Server(bundle_dir, data).start().stop()  # the loss was accepted once, not for good


def test_a_corrupt_database_is_refused_naming_the_file(bundle_dir, tmp_path):
    data = tmp_path / "data"
    srv = Server(bundle_dir, data).start()
    for start in range(0, 300, 30):
        add(srv.url, start, 30)
    srv.stop()
    db = data / DB
    with db.open("r+b") as f:  # the b-tree page headers of pages 2-4 overwritten
        f.seek(16)
        size = int.from_bytes(f.read(2), "big")  # the page size, from the file's header
        for page in (1, 2, 3):
            f.seek(page * size)
            f.write(b"\xff" * 16)
    err = start_fails(bundle_dir, data)
    assert str(db) in err and "backup" in err


def test_sigterm_checkpoints_the_wal_and_backup_copies_a_consistent_gallery(bundle_dir,
                                                                            tmp_path):
    data = tmp_path / "data"
    srv = Server(bundle_dir, data).start()
    try:
        for start in range(0, 120, 30):
            assert add(srv.url, start, 30).status_code == 200
        backup = tmp_path / "backup" / DB
        r = subprocess.run([sys.executable, "-m", "simclr_embed.cli", "gallery", "backup",
                            str(backup)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "SIMCLR_EMBED_DATA_DIR": str(data),
                                "SIMCLR_EMBED_BUNDLE": str(bundle_dir)})
        assert r.returncode == 0, r.stderr
        with sqlite3.connect(backup) as b:
            assert b.execute("SELECT count(*) FROM items WHERE id LIKE 'item/%'"
                             ).fetchone()[0] == 120
    finally:
        srv.stop()  # SIGTERM
    wal = data / (DB + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    alone = tmp_path / "alone"  # the .sqlite3 file by itself holds every change
    alone.mkdir()
    shutil.copy(data / DB, alone / DB)
    with sqlite3.connect(alone / DB) as c:
        assert c.execute("SELECT count(*) FROM items WHERE id LIKE 'item/%'").fetchone()[0] == 120
