"""Schemathesis fuzzes every documented operation of a real server from its own OpenAPI schema:
no 500s, responses that match their documented schemas, status codes and content types, the
Allow header on 405s, and so on. One check is left out: `positive_data_acceptance` counts a
400 for a schema-valid string that is not a decodable image as a failure, and no JSON schema
can say "a decodable image"."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.servers import API_KEY, Server


def test_schemathesis_finds_no_failures(bundle_dir: Path, tmp_path: Path) -> None:
    """On a server of its own: what it adds, deletes and breaks touches no other test."""
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    server = Server(bundle_dir, tmp_path / "data",
                    SIMCLR_EMBED_MAX_BODY_BYTES=str(2 * 2**20)).start()
    try:
        r = _run(exe, server.url, tmp_path)
    finally:
        server.stop()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "failure" not in out.split("SUMMARY")[-1].lower(), out[-3000:]


def _run(exe: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exe, "run", url + "/openapi.json", "-H", f"X-API-Key: {API_KEY}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "30", "--seed", "1", "--no-color",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
