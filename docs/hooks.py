"""MkDocs hooks: the README is the front page, the committed benchmark plots are served beside
the pages, and `<!-- table: NAME -->` markers become tables made from the committed result JSON
(benchmarks/tables.py), so that no figure is copied by hand."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

from simclr_embed.benchmarks import tables

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- table: ([a-z_]+) -->")


def on_files(files: Files, config) -> Files:
    for png in sorted((ROOT / "benchmarks" / "results").rglob("*.png")):
        files.append(File(str(png.relative_to(ROOT)), str(ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":  # the README, its links made relative to docs/
        markdown = (ROOT / "README.md").read_text().replace("](docs/", "](")
    markdown = markdown.replace("](../benchmarks/results/", "](benchmarks/results/")
    return MARKER.sub(lambda m: tables.render(m.group(1), ROOT), markdown)
