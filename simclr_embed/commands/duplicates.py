"""`simclr-embed duplicates`: exact and near duplicates in a folder, an archive, a manifest or
the served gallery, by the bundle's calibrated threshold; or, with --calibrate, that threshold
measured and stored in a bundle exported before it had one."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from tqdm import tqdm

from simclr_embed.cli import settings_flags, with_flags
from simclr_embed.errors import ConfigError
from simclr_embed.service.settings import GallerySettings, ModelSettings, Settings, load_settings

log = logging.getLogger("simclr_embed")


@with_flags(*settings_flags(ModelSettings, GallerySettings))
def command(source: Annotated[Path | None, typer.Argument(
                help="folder, archive or manifest, as `index` reads them")] = None,
            report: Annotated[Path, typer.Option(help="the JSON report")] = Path(
                "duplicates.json"),
            gallery: Annotated[bool, typer.Option(
                "--gallery", help="the served gallery instead of SOURCE")] = False,
            threshold: Annotated[float | None, typer.Option(
                help="near-duplicate cosine (default: the bundle's calibrated one)")] = None,
            calibrate: Annotated[bool, typer.Option(
                "--calibrate", help="measure the threshold on --data and store it in the "
                "bundle")] = False,
            data: Annotated[str, typer.Option(help="with --calibrate: images with a test "
                                                   "split, as `train --data` takes them")
                            ] = "cifar10",
            labels: Annotated[bool, typer.Option(
                help="the first folder level is the label")] = True,
            **given: Any) -> None:
    """Pairs {a, b, kind, score} and groups: exact duplicates (identical decoded pixels; in
    the gallery, the same vector up to rounding) and near ones (cosine at or above the
    threshold calibrated at export, docs/gallery.md)."""
    settings = load_settings(**given)
    if calibrate:
        return calibrate_bundle(settings, data)
    if (source is None) == (not gallery):
        raise ConfigError("give SOURCE (a folder, archive or manifest) or --gallery")
    from simclr_embed.service.bundle import load_bundle
    from simclr_embed.service.duplicates import calibrated_threshold, find_pairs
    from simclr_embed.service.duplicates import report as make_report

    bundle = load_bundle(settings.bundle_dirs()[0])
    t = threshold or calibrated_threshold(bundle.manifest, settings.precision)
    if t is None:
        raise ConfigError(f"{bundle.root} has no calibrated near-duplicate threshold: run "
                          "`simclr-embed duplicates --calibrate` on it, or give --threshold")
    names, vectors, hashes = (served(settings, bundle) if gallery
                              else embedded(source, labels, settings, bundle))  # type: ignore
    log.info("searching %d items for pairs at cosine >= %.4f", len(names), t)
    result = make_report(names, find_pairs(vectors, hashes, t), t)
    report.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%d pairs (%d exact) in %d groups: %s", result["total_pairs"],
             result["exact_pairs"], len(result["groups"]), report)


def calibrate_bundle(settings: Settings, data: str) -> None:
    from simclr_embed.export.near_duplicates import calibrate_bundle as measure
    from simclr_embed.service.bundle import load_bundle, write_manifest

    bundle = load_bundle(settings.bundle_dirs()[0])
    found = measure(bundle, data, settings.precision)
    manifest = bundle.manifest
    manifest.setdefault("duplicates", {})[settings.precision] = found
    write_manifest(bundle.root, manifest)
    log.info("stored in %s: threshold %.4f", bundle.root / "manifest.json", found["threshold"])


def served(settings: Settings, bundle: Any) -> tuple[list[str], np.ndarray, None]:
    """The gallery a server with these settings serves: the bundle's items and every change."""
    from simclr_embed.service.bundle import model_id
    from simclr_embed.service.engine import open_gallery
    from simclr_embed.service.store import Space

    # Read, not searched: a flat index loads at once where HNSW would build its graph.
    store = open_gallery(settings.model_copy(update={"index": "flat"}),
                         Space(model_id(bundle.manifest), settings.precision,
                               int(bundle.manifest["embedding_dim"])))
    ids, labels, emb = bundle.gallery(settings.precision)
    store.load(ids.tolist(), [bundle.classes[y] for y in labels.tolist()], emb)
    try:
        names, _, vectors = store.items()
    finally:
        store.close()
    return names, vectors, None  # no pixels: exact by cosine (service/duplicates.py)


def embedded(source: Path, labels: bool, settings: Settings, bundle: Any
             ) -> tuple[list[str], np.ndarray, list[str]]:
    """SOURCE's files decoded and embedded as `index` would, with the hash of each one's
    full decoded pixels; files that fail are skipped and logged."""
    from PIL import Image

    from simclr_embed.service.duplicates import pixel_hash
    from simclr_embed.service.indexer import (
        BATCH,
        check_entries,
        chunks,
        decode_chunk,
        embedding_session,
        list_source,
        read_files,
    )

    listed = list_source(source, labels)
    entries = check_entries(listed, settings.max_label_chars)
    session, name, size = embedding_session(bundle, settings)
    names, vectors, hashes = [], [], []
    with tqdm(total=len(entries), unit="img", desc="duplicates") as bar:
        for chunk in chunks(read_files(listed, entries, settings.max_body_bytes), BATCH):
            d = decode_chunk(chunk, size, settings)
            for e, reason in d.skipped:
                log.warning("skipped %s: %s", e.id, reason)
            raw = {e.id: r for e, r in chunk if isinstance(r, bytes)}
            for e in d.entries:  # the limits held in decode_chunk: this decode is safe
                with Image.open(io.BytesIO(raw[e.id])) as img:
                    hashes.append(pixel_hash(np.asarray(img.convert("RGB"))))
            if d.entries:
                vectors.append(session.run(None, {name: d.pixels})[0])
                names += [e.id for e in d.entries]
            bar.update(len(chunk))
    dim = int(bundle.manifest["embedding_dim"])
    return names, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), hashes
