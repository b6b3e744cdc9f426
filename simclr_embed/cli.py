"""`simclr-embed`: one entry point on top of the stages, one command per stage, on typer.

The flags are made from the configs they fill (the service's settings, the training and export
dataclasses): their names, types, choices and defaults are the fields'. A command's function
gets only the flags that were given, so that what it merges them into (a recipe, the
SIMCLR_EMBED_* environment) keeps its own values for the rest. Only the module of the command
being run is imported: the training stages' import torch, and serving never does."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import sys
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

import typer

from simclr_embed import configure_logging
from simclr_embed.errors import UserError

log = logging.getLogger("simclr_embed")

# name -> one-line help: listed here so that `--help` imports no command. Each is defined as
# `command` in simclr_embed/commands/<name>.py; the training stages' import torch.
COMMANDS: dict[str, str] = {
    "train": "train SimCLR, then kNN + linear-probe evaluation (needs torch)",
    "eval": "kNN + linear probe of a checkpoint (needs torch)",
    "export": "checkpoint -> ONNX FP32 + INT8 -> verified model bundle (needs torch)",
    "audit": "alignment, uniformity, invariance and background reliance of a model (needs torch)",
    "ablate": "temperature x head-depth grid: accuracy vs alignment and uniformity (needs torch)",
    "serve": "run the HTTP service on a model bundle (no torch needed)",
    "index": "embed a folder, an archive or a manifest into the gallery",
    "search": "nearest gallery items of image files, from a server",
    "gallery": "the embedded gallery's database: backup",
    "duplicates": "exact and near duplicates of a collection or the gallery, by the bundle's "
                  "calibrated threshold",
}


@dataclasses.dataclass(frozen=True)
class Flag:
    """One option made from a config field."""

    name: str  # the keyword the command receives
    annotation: Any
    default: Any
    help: str = ""
    panel: str | None = None  # the --help section it is listed in


def dataclass_flags(cls: type, prefix: str = "", skip: Iterable[str] = (),
                    panel: str | None = None) -> list[Flag]:
    """A flag per field of a config dataclass; nested configs get their own call."""
    hints = typing.get_type_hints(cls)
    return [Flag(prefix + f.name, hints[f.name], f.default, f.metadata.get("help", ""), panel)
            for f in dataclasses.fields(cls)
            if f.name not in skip and not dataclasses.is_dataclass(hints[f.name])]


def settings_flags(*groups: type) -> list[Flag]:
    """A flag per field of the service's settings groups, listed group by group as the README's
    settings table lists them. Keys are read as plain strings; Settings makes them secret."""
    from pydantic import SecretStr

    flags = []
    for group in groups:
        panel = f"{group.__name__.removesuffix('Settings').lower()} settings"
        for name, f in group.model_fields.items():
            kind = f.annotation
            if kind in (SecretStr, SecretStr | None):
                kind = str
            flags.append(Flag(name, kind, f.default, f.description or "", panel))
    return flags


def _option(flag: Flag) -> inspect.Parameter:
    """The flag as typer reads it: None by default, so that a flag not given is told apart
    from one given its default value; the real default is what --help shows."""
    kind = typing.get_args(flag.annotation)[0] if _optional(flag.annotation) else flag.annotation
    if typing.get_origin(kind) is tuple and typing.get_args(kind)[-1] is Ellipsis:
        kind = list[typing.get_args(kind)[0]]  # a flag repeated: --temperatures 0.1 --tem...
    decls = [f"--{flag.name.replace('_', '-')}"]
    if kind is bool:
        decls = [f"{decls[0]}/--no-{decls[0][2:]}"]
    shown = ", ".join(map(str, flag.default)) if isinstance(flag.default, tuple) else flag.default
    option = typer.Option(*decls, help=flag.help, rich_help_panel=flag.panel,
                          show_default=str(shown) if shown not in (None, "") else False)
    return inspect.Parameter(flag.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, option])


def _optional(annotation: Any) -> bool:
    args = typing.get_args(annotation)
    return type(None) in args and len(args) == 2


def with_flags(*flags: Flag) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The command's own parameters plus one option per flag; it receives the flags that were
    given, by name, in its **given."""
    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(fn, include_extras=True)
        sig = inspect.signature(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in own}

        @functools.wraps(fn)
        def command(**kw: Any) -> None:
            given = {k: v for k, v in kw.items() if k not in names and v is not None}
            fn(**{k: kw[k] for k in names}, **given)

        params = own + [_option(f) for f in flags]
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command
    return wrap


def build_app(command: str | None = None) -> typer.Typer:
    """The command line; only `command`'s module is imported, the others are listed by name
    and help (their modules may import torch)."""
    app = typer.Typer(name="simclr-embed", help=(__doc__ or "").split("\n\n")[0],
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def main_options(verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                           help="debug logging")] = False
                     ) -> None:
        configure_logging(level=logging.DEBUG if verbose else logging.INFO)

    for name, help_ in COMMANDS.items():
        if name != command:
            app.command(name, help=help_)(_listed)
            continue
        try:
            target = importlib.import_module(f"simclr_embed.commands.{name}").command
        except ImportError as e:  # a serving-only install has no torch
            target = _unavailable(name, e)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name, short_help=help_)
        else:
            app.command(name, short_help=help_)(target)
    return app


def _listed() -> None:
    """Never run: the command named on the command line is always built in full."""


def _unavailable(name: str, err: ImportError) -> Callable[[], None]:
    def fail() -> None:
        raise UserError(f"`simclr-embed {name}` needs torch: pip install 'simclr-embed[train]'"
                        f" ({err.name} is not installed)")
    return fail


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command line; a user's error (simclr_embed/errors.py) is one line and status 2,
    anything else is a bug and keeps its traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), None)
    try:
        build_app(command)(args, prog_name="simclr-embed")
    except UserError as e:
        log.error("%s", e)
        return 2
    except SystemExit as e:  # typer's own: --help, or a usage error it printed (status 2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
