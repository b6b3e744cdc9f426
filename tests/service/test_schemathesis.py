"""Schemathesis fuzzes every documented operation of a real server from its own OpenAPI schema:
no 500s, responses that match their documented schemas, status codes and content types, the
Allow header on 405s, and so on. One check is left out: `positive_data_acceptance` counts a
400 for a schema-valid string that is not a decodable image as a failure, and no JSON schema
can say "a decodable image"."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.servers import API_KEY


def test_schemathesis_finds_no_failures(server, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    r = subprocess.run(
        [exe, "run", server.url + "/openapi.json", "-H", f"X-API-Key: {API_KEY}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "30", "--seed", "1", "--no-color",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "failure" not in out.split("SUMMARY")[-1].lower(), out[-3000:]
