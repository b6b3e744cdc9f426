"""`simclr-embed`: one entry point on top of the stages, one subcommand per stage. Heavy
imports (torch) happen inside the subcommand that needs them, so `--help` is instant and
serving never imports torch."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from simclr_embed import configure_logging
from simclr_embed.errors import ConfigError, UserError

log = logging.getLogger("simclr_embed")

# Errors whose message already says what went wrong and what to do get one line, no traceback:
# our own (simclr_embed/errors.py) and pydantic's, for a bad SIMCLR_EMBED_* variable.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (UserError, ValidationError)

_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float,
          "str | None": str}
_CHOICES = {  # field -> (module, tuple of valid values)
    "optimizer": ("simclr_embed.training.optim", "OPTIMIZERS"),
    "precision": ("simclr_embed.training.train", "PRECISIONS"),
    "device": ("simclr_embed.training.train", "DEVICES"),
    "exporter": ("simclr_embed.export.onnx_export", "EXPORTERS"),
    "calibration_method": ("simclr_embed.export.quantize", "CALIBRATION_METHODS"),
    "activation_type": ("simclr_embed.export.quantize", "QUANT_TYPES"),
    "weight_type": ("simclr_embed.export.quantize", "QUANT_TYPES"),
}


def _add_dataclass_args(p: argparse.ArgumentParser, cls: type, prefix: str = "",
                        skip: tuple[str, ...] = ("checkpoint",)) -> None:
    """One --flag per field of a flat config dataclass, its default shown in --help; a
    tuple[float, ...] field takes that many values (--aug-crop-scale 0.2 1.0)."""
    for f in dataclasses.fields(cls):
        ftype = str(f.type)  # a string: the configs' modules use postponed annotations
        arity = ftype.count("float") if ftype.startswith("tuple[") else 0
        if f.name in skip or (ftype not in _TYPES and ftype != "bool" and not arity):
            continue  # nested configs get their own prefixed flags
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        kw: dict = {"dest": prefix + f.name, "default": default, "help": f"(default: {default})"}
        if arity:
            p.add_argument(flag, type=float, nargs=arity, **kw)
            continue
        if ftype == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.name in _CHOICES:
            module, attr = _CHOICES[f.name]
            kw["choices"] = getattr(importlib.import_module(module), attr)
        p.add_argument(flag, type=_TYPES[ftype], **kw)


def _train_parser(sub: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    from simclr_embed.training.augment import AugmentConfig
    from simclr_embed.training.model import ModelConfig
    from simclr_embed.training.train import RECIPES, TrainConfig

    p = sub.add_parser("train", help="train SimCLR, then kNN + linear-probe evaluation",
                       description="Train SimCLR (InfoNCE) on CIFAR-10 or an image folder. --data "
                       "is 'cifar10' (downloads), or a path: a directory with train/ and test/ "
                       "(folders or .tar.gz), or one image folder / .tar.gz.")
    _add_dataclass_args(p, TrainConfig)
    _add_dataclass_args(p, ModelConfig, prefix="model_")
    # The view size follows --image-size: views are as large as what export and serving see.
    _add_dataclass_args(p, AugmentConfig, prefix="aug_", skip=("size",))
    p.add_argument("--recipe", choices=tuple(RECIPES), default="default",
                   help="a named set of defaults that explicit flags override: " + "; ".join(
                       f"{name}: {', '.join(f'{k}={v}' for k, v in kw.items()) or 'as shown'}"
                       for name, kw in RECIPES.items()))
    # The recipe is known before the real parse, so that its values become the defaults.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default="default")
    p.set_defaults(**RECIPES.get(pre.parse_known_args(argv)[0].recipe, {}))
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its checkpoint.pt")
    p.add_argument("--stop-after", type=int, default=None,
                   help="end after this many epochs; the run stays resumable")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from simclr_embed.training.train import train

    ckpt = train(config_from_args(args), resume=args.resume, stop_after=args.stop_after)
    log.info("checkpoint: %s", ckpt)


def config_from_args(args: argparse.Namespace):  # -> TrainConfig (torch stays unimported here)
    from simclr_embed.training.augment import AugmentConfig
    from simclr_embed.training.model import ModelConfig
    from simclr_embed.training.train import TrainConfig

    v = vars(args)
    names = [prefix + f.name for prefix, cls in (("", TrainConfig), ("model_", ModelConfig),
                                                 ("aug_", AugmentConfig))
             for f in dataclasses.fields(cls)]
    return TrainConfig.from_flat({name: v[name] for name in names if name in v})


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="kNN + linear probe of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, help="data source (default: the checkpoint's)")
    p.add_argument("--probe-epochs", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from simclr_embed.training.train import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.data, args.probe_epochs,
                                 args.train_per_class, args.test_per_class, args.device)
    result.pop("probe_history")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def _export_parser(sub: argparse._SubParsersAction) -> None:
    from simclr_embed.export.build import ExportConfig

    p = sub.add_parser("export", help="checkpoint -> ONNX FP32 + INT8 -> verified model bundle",
                       description="Export a finished training checkpoint to a model bundle: "
                       "ONNX FP32, calibrated INT8, FP32-vs-INT8 report, gallery embeddings.")
    p.add_argument("checkpoint")
    _add_dataclass_args(p, ExportConfig)
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from simclr_embed.export.build import ExportConfig, build_bundle

    v = vars(args)
    cfg = ExportConfig(**{f.name: v[f.name] for f in dataclasses.fields(ExportConfig)})
    build_bundle(cfg)


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    from simclr_embed.training.audit import AuditConfig

    p = sub.add_parser("audit", help=STAGE_HELP["audit"], description="Alignment and uniformity "
                       "of h and z, invariance per augmentation, and a background probe "
                       "(GrabCut masks; noise / other-class / removed backgrounds) of a training "
                       "checkpoint (.pt), released weights (.safetensors) or a bundle directory.")
    p.add_argument("source", help="checkpoint, weights file or bundle directory")
    _add_dataclass_args(p, AuditConfig, skip=("source",))
    p.set_defaults(func=_run_audit)


def _run_audit(args: argparse.Namespace) -> None:
    from pathlib import Path

    from simclr_embed.training.audit import AuditConfig, audit_markdown, run_audit, write_report

    v = vars(args)
    cfg = AuditConfig(**{f.name: v[f.name] for f in dataclasses.fields(AuditConfig)})
    path = write_report(run_audit(cfg), Path(cfg.out))
    sys.stdout.write(audit_markdown(json.loads(path.read_text())))
    log.info("report: %s", path)


def _ablate_parser(sub: argparse._SubParsersAction) -> None:
    from simclr_embed.training.ablate import AblateConfig

    p = sub.add_parser("ablate", help=STAGE_HELP["ablate"], description="Train a grid of "
                       "temperature x projection-head depth with one budget and seed; report "
                       "kNN / linear top-1, alignment and uniformity, and which one tracks "
                       "accuracy. Re-running continues an interrupted grid.")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--head-layers", type=int, nargs="+", default=[1, 2],
                   help="Linear layers in the projection head: 1 = linear, 2 = one hidden layer")
    _add_dataclass_args(p, AblateConfig, skip=("temperatures", "head_layers"))
    p.set_defaults(func=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> None:
    from simclr_embed.training.ablate import AblateConfig, run_ablation

    v = vars(args)
    fields: dict[str, Any] = {f.name: tuple(v[f.name]) if isinstance(v[f.name], list)
                              else v[f.name] for f in dataclasses.fields(AblateConfig)}
    cfg = AblateConfig(**fields)
    run_ablation(cfg)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP service on a model bundle (no torch needed)",
                       description="Serve embed, search and classify over HTTP. Every option "
                       "also reads from SIMCLR_EMBED_<NAME> (see service/settings.py).")
    p.add_argument("bundle", nargs="*", default=None, help="bundle directories, or a "
                   "directory of bundles, each served as its own model, the first by default "
                   "(default: $SIMCLR_EMBED_BUNDLE or bundles/default)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--precision", choices=("int8", "fp32"), default=None)
    p.add_argument("--provider", choices=("auto", "cpu", "cuda", "openvino"), default=None,
                   help="auto (default): the fastest here among the runtimes that passed the "
                   "bundle's gates; cpu / cuda: ONNX Runtime; openvino: OpenVINO on the CPU")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes")
    p.add_argument("--log-config", default=None, metavar="FILE", help="uvicorn's logging "
                   "config (JSON, YAML or ini), for its loggers and ours alike")
    p.add_argument("--api-key", default=None, help="the key for gallery changes "
                   "($SIMCLR_EMBED_API_KEY); without one, the gallery is read-only")
    p.add_argument("--build-if-missing", action="store_true",
                   help="no bundle yet: export the released weights in models/ first (a few "
                   "minutes on a CPU); with --train-own, train one here instead")
    p.add_argument("--train-own", action="store_true",
                   help="with --build-if-missing: train a model here instead of exporting the "
                   "released weights in models/")
    p.add_argument("--data", default="cifar10", help="data for --build-if-missing")
    p.set_defaults(func=_run_serve)


def settings_from_args(args: argparse.Namespace, *keys: str) -> None:
    """The flags that were given, as the SIMCLR_EMBED_* variables Settings reads."""
    import os

    for key in keys:
        if getattr(args, key) is not None:
            os.environ[f"SIMCLR_EMBED_{key.upper()}"] = str(getattr(args, key))


def _run_serve(args: argparse.Namespace) -> None:

    import uvicorn

    # The app factory reads the environment, in every worker.
    if args.bundle:
        args.more_bundles = ",".join(args.bundle[1:])
        args.bundle = args.bundle[0]
    else:
        args.bundle = args.more_bundles = None
    settings_from_args(args, "bundle", "more_bundles", "host", "port", "precision", "provider",
                       "threads", "workers", "api_key")
    from simclr_embed.service.settings import Settings

    settings = Settings()
    if settings.log_format == "json":
        configure_logging(json_lines=True, replace=True)
    if args.build_if_missing and not (settings.bundle / "manifest.json").exists():
        from simclr_embed.training.quickstart import build_default_bundle

        build_default_bundle(settings.bundle, args.data, train_anyway=args.train_own)
    from simclr_embed.service.startup import check_before_workers

    check_before_workers(settings)
    from simclr_embed.service.protocol import UVICORN_OPTIONS

    app = "simclr_embed.service.app:app_from_env"
    options = {**UVICORN_OPTIONS, **({"log_config": args.log_config} if args.log_config else {})}
    if settings.workers == 1:
        uvicorn.run(app, factory=True, host=settings.host, port=settings.port, **options)
        return
    from simclr_embed.service.supervisor import SwappingSupervisor

    config = uvicorn.Config(app, factory=True, host=settings.host, port=settings.port,
                            workers=settings.workers, **options)
    SwappingSupervisor(config, sockets=[config.bind_socket()]).run()


def _gallery_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gallery", help="the embedded gallery's database: backup",
                       description="Works beside a running server, with its settings "
                       "(SIMCLR_EMBED_DATA_DIR, SIMCLR_EMBED_BUNDLE, SIMCLR_EMBED_PRECISION).")
    ops = p.add_subparsers(dest="op", required=True, metavar="OP")
    b = ops.add_parser("backup", help="a consistent copy of the gallery (SQLite's online backup"
                       " API), safe while the server writes")
    b.add_argument("dest", help="file to write, e.g. backups/gallery-int8.sqlite3")
    p.set_defaults(func=_run_gallery)


def _run_gallery(args: argparse.Namespace) -> None:
    from pathlib import Path

    from simclr_embed.service.bundle import load_bundle, model_id
    from simclr_embed.service.gallery import SQLiteStore, gallery_path
    from simclr_embed.service.settings import Settings
    from simclr_embed.service.store import Space

    s = Settings()
    if s.gallery_url is not None:
        raise ConfigError("SIMCLR_EMBED_GALLERY_URL is set: back PostgreSQL up with pg_dump")
    manifest = load_bundle(s.bundle_dirs()[0]).manifest
    space = Space(model_id(manifest), s.precision, int(manifest["embedding_dim"]))
    path = gallery_path(s.data_dir, space)
    if not path.exists():
        raise ConfigError(f"no gallery database at {path}: check SIMCLR_EMBED_DATA_DIR")
    store = SQLiteStore(path, space)
    try:
        seq = store.backup(Path(args.dest))
    finally:
        store.close()
    log.info("backed up %s to %s (changes up to number %d)", path, args.dest, seq)


def _index_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed a folder, an archive or a manifest into the gallery",
                       description="Embed SOURCE into the gallery `simclr-embed serve` uses with "
                       "the same settings (SIMCLR_EMBED_DATA_DIR or SIMCLR_EMBED_GALLERY_URL, "
                       "SIMCLR_EMBED_BUNDLE, SIMCLR_EMBED_PRECISION). SOURCE: an image folder "
                       "(label = first folder level), a .tar/.tar.gz of one, or a manifest "
                       "(.csv, .jsonl, .parquet) with a path column and optional id, label and "
                       "metadata columns. Reruns skip unchanged files; a killed run resumes.")
    p.add_argument("source", help="folder, archive or manifest")
    p.add_argument("--bundle", default=None, help="bundle directory (default: "
                   "$SIMCLR_EMBED_BUNDLE or bundles/default)")
    p.add_argument("--precision", choices=("int8", "fp32"), default=None)
    p.add_argument("--provider", choices=("auto", "cpu", "cuda", "openvino"), default=None)
    p.add_argument("--data-dir", default=None, help="the embedded gallery's directory "
                   "($SIMCLR_EMBED_DATA_DIR)")
    p.add_argument("--model", default=None, help="the served model (id or bundle directory "
                   "name, as ?model= takes) whose gallery to write; default: the first, the "
                   "one a server with these settings answers without ?model=")
    p.add_argument("--no-labels", action="store_true", help="folders are not labels")
    p.add_argument("--path-column", default="path", help="a manifest's column of file paths")
    p.add_argument("--prune", action="store_true", help="delete the items of SOURCE whose "
                   "files are gone")
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--report", default="index-report.json",
                   help="JSON report: counts, images/s, skipped files and why")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run as a Ray Data job: on the cluster at ADDRESS, or without one on a "
                   "local Ray instance (the index extra)")
    p.add_argument("--actors", type=int, default=1, help="with --ray: embedding actors, one "
                   "runtime session each (one per node is a good start)")
    p.set_defaults(func=_run_index)


def _run_index(args: argparse.Namespace) -> None:
    from pathlib import Path

    settings_from_args(args, "bundle", "precision", "provider", "data_dir")
    from simclr_embed.service.indexer import IndexJob, run_index
    from simclr_embed.service.settings import Settings

    job = IndexJob(Path(args.source), not args.no_labels, args.path_column, args.prune,
                   args.decode_threads, Path(args.report) if args.report else None, args.ray,
                   args.actors, args.model)
    run_index(job, Settings())


def _search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="nearest gallery items of image files, from a server",
                       description="Ask a running server (POST /v1/search) for the gallery "
                       "items nearest to each IMAGE and print them as a table.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None, help="for a server that requires one "
                   "($SIMCLR_EMBED_API_KEY)")
    p.add_argument("--json", action="store_true", help="the server's JSON instead of a table")
    p.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> None:
    import os

    from simclr_embed.search_client import search_files, table

    key = args.api_key or os.environ.get("SIMCLR_EMBED_API_KEY") or None
    result = search_files(args.images, args.k, args.url, key)
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json
                     else table(args.images, result))


def _unavailable(sub: argparse._SubParsersAction, name: str, err: ImportError) -> None:
    p = sub.add_parser(name, help=f"(needs the train extra: {err.name} is not installed)")

    def fail(_: argparse.Namespace) -> None:
        raise ConfigError(f"`simclr-embed {name}` needs torch: pip install 'simclr-embed[train]'"
                         f" ({err.name} is not installed)")

    p.set_defaults(func=fail)


STAGE_HELP = {"train": "train SimCLR, then kNN + linear-probe evaluation (needs torch)",
              "eval": "kNN + linear probe of a checkpoint (needs torch)",
              "export": "checkpoint -> ONNX FP32 + INT8 -> verified model bundle (needs torch)",
              "audit": "alignment, uniformity, invariance and background reliance of a model "
                       "(needs torch)",
              "ablate": "temperature x head-depth grid: accuracy vs alignment and uniformity "
                        "(needs torch)"}


def build_parser(command: str | None = None,
                 argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The full parser; given the command about to run, the other stages' parsers (and their
    torch imports) are left out, so `serve` starts without torch even where it is installed.
    argv: the command line, for defaults that depend on it (train --recipe)."""
    parser = argparse.ArgumentParser(prog="simclr-embed", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stages = {"train": functools.partial(_train_parser, argv=argv), "eval": _eval_parser,
              "export": _export_parser, "audit": _audit_parser, "ablate": _ablate_parser}
    for name, register in stages.items():
        if command != name:  # listed, not built: its parser imports torch
            sub.add_parser(name, help=STAGE_HELP[name])
            continue
        try:
            register(sub)
        except ImportError as e:  # a serving-only install has no torch
            _unavailable(sub, name, e)
    _serve_parser(sub)
    _index_parser(sub)
    _search_parser(sub)
    _gallery_parser(sub)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line with only its own stage's parser built (see build_parser)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return build_parser(command, argv).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.func(args)
    except EXPECTED_ERRORS as e:  # anything else is a bug: its traceback
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
