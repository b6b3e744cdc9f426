"""Schemathesis fuzzes every documented operation of a real server from its own OpenAPI schema:
no 500s, responses that match their documented schemas, status codes and content types, the
Allow header on 405s, and so on. `positive_data_acceptance` (schema-valid data gets a 2xx, 401,
403 or 404) runs on the operations that take no image: for those that do, a schema-valid string
that is not a decodable image is rightly a 400, and no JSON schema can say "a decodable image"."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import API_KEY, Server

IMAGE_OPERATIONS = ["POST /v1/embed", "POST /v1/search", "POST /v1/classify",
                    "POST /v1/embeddings", "POST /v1/gallery"]


@pytest.fixture(scope="module")
def fuzzed(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """On a server of its own: what it adds, deletes and breaks touches no other test."""
    server = Server(bundle_dir, tmp_path_factory.mktemp("fuzzed") / "data",
                    SIMCLR_EMBED_MAX_BODY_BYTES=str(2 * 2**20)).start()
    yield server
    server.stop()


@pytest.mark.parametrize("scope", ["all operations", "operations without images"])
def test_schemathesis_finds_no_failures(scope: str, fuzzed, tmp_path: Path) -> None:
    if scope == "all operations":
        args = ["--exclude-checks", "positive_data_acceptance"]
    else:
        args = [a for op in IMAGE_OPERATIONS for a in ("--exclude-name", op)]
    r = _run(fuzzed.url, tmp_path, args)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "failure" not in out.split("SUMMARY")[-1].lower(), out[-3000:]
    if scope != "all operations":  # each name matched one operation: none fuzzed unchecked
        selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", out).groups())
        assert selected == total - len(IMAGE_OPERATIONS), out[-3000:]


def _run(url: str, tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    return subprocess.run(
        [exe, "run", url + "/openapi.json", "-H", f"X-API-Key: {API_KEY}", "--checks", "all",
         *args, "--max-examples", "200", "--seed", "1", "--no-color",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
