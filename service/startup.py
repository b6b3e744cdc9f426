"""What `simclr-embed serve` checks once, in the parent process, before uvicorn starts any
worker: under --workers N uvicorn's supervisor would report a worker's failed start with exit
status 0, so the failures that can be seen early (a bad bundle, a gallery of another model)
are raised here and exit non-zero; what it verified (the bundle's hashes, the database's
quick_check) the workers need not read again. It also prepares prometheus_client's
multiprocess mode."""

from __future__ import annotations

import os
import shutil

from simclr_embed.service.bundle import VERIFIED_ENV, load_bundle, model_id, stamp
from simclr_embed.service.gallery import CHECKED_ENV, SQLiteStore, gallery_path
from simclr_embed.service.settings import Settings
from simclr_embed.service.store import Space

PREPARED_ENV = "SIMCLR_EMBED_PREPARED"  # what this process and its workers were checked for


def check_before_workers(settings: Settings) -> None:
    dirs = settings.bundle_dirs()
    key = "|".join([*(str(d.resolve()) for d in dirs), str(settings.data_dir.resolve()),
                    settings.precision])
    if os.environ.get(PREPARED_ENV) == key:  # a worker of `simclr-embed serve`
        return
    verified, checked = [], []
    for d in dirs:  # in the engines' order: the first model takes the data directory's gallery
        bundle = load_bundle(d)
        verified.append(stamp(d, bundle.manifest["files"]))
        space = Space(model_id(bundle.manifest), settings.precision,
                      int(bundle.manifest["embedding_dim"]))
        if settings.gallery_url is None:
            path = gallery_path(settings.data_dir, space)
            store = SQLiteStore(path, space, settings.accept_gallery_loss)  # GalleryDamaged
            store.close()
            checked.append(str(path))  # the workers need not read the file again
    os.environ[VERIFIED_ENV], os.environ[CHECKED_ENV] = "\n".join(verified), "\n".join(checked)
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = settings.data_dir / "prometheus-multiproc"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at zero with the server
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[PREPARED_ENV] = key
