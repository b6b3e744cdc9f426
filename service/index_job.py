"""What one `simclr-embed index` run is asked to do: the command's flags are these fields
(simclr_embed/commands/index.py), apart from the indexer so that `index --help` imports none
of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class IndexJob:
    source: Path
    labels: bool = field(default=True, metadata=_help("the first folder level is the label"))
    path_column: str = field(default="path", metadata=_help("a manifest's column of file paths"))
    prune: bool = field(default=False, metadata=_help("delete the items of SOURCE whose files "
                                                      "are gone"))
    decode_threads: int = 2
    report: Path | None = field(default=Path("index-report.json"), metadata=_help(
        "JSON report: counts, images/s, skipped files and why; '' for none"))
    ray: str | None = field(default=None, metadata=_help(
        "run as a Ray Data job: 'local' on a Ray instance started for it, else the address of "
        "a cluster, e.g. 'auto' (the index extra); not given: here"))
    actors: int = field(default=1, metadata=_help("with --ray: embedding actors, one runtime "
                                                  "session each (one per node is a good start)"))
    model: str | None = field(default=None, metadata=_help(
        "the served model (id or bundle directory name, as ?model= takes) whose gallery to "
        "write; default: the first, the one a server with these settings answers without "
        "?model="))

    def __post_init__(self) -> None:
        # `--report ''` arrives as Path(''), which is Path('.'): a directory, never a report.
        if self.report is not None and self.report == Path():
            self.report = None
