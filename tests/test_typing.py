"""The type checker's baseline (.basedpyright/baseline.json: what it found when it joined the
test command) exempts nothing in the service, the export stage or the command line: those are
clean at basedpyright's standard level, so any error there fails the test command."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Under either way of naming the files: through the simclr_embed/<stage> links (as checked now)
# or by the stages' own paths (as the first baseline named them).
CLEAN = ("./simclr_embed/service/", "./simclr_embed/export/", "./simclr_embed/cli.py",
         "./simclr_embed/commands/",
         "./service/", "./export/")


def test_the_baseline_exempts_nothing_that_must_be_clean() -> None:
    files = json.loads((REPO / ".basedpyright/baseline.json").read_text())["files"]
    assert files, "the baseline lists the remaining files"
    assert [f for f in files if f.startswith(CLEAN) and files[f]] == []
