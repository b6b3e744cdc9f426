"""Which command-line library `simclr-embed` is built on (#35), chosen by start-up time: the
same `serve` command over the service's settings (service/settings.py, every field a flag)
built on each candidate, each program started as a fresh process, interleaved round by round.

Measured: `serve --help` (what a user waits for) and a parse that runs the command with two
bundles and options between them (`serve A --port 8001 B`), which argparse and
pydantic-settings' CLI source refuse. The programs also say what each does with that line.
Candidates missing from the environment are skipped and named in the result:

    python -m venv /tmp/cli && /tmp/cli/bin/pip install cyclopts typer tyro pydantic-settings
    PYTHONPATH=. /tmp/cli/bin/python -m benchmarks.archive.cli_libraries
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from simclr_embed import configure_logging
from simclr_embed.benchmarks.harness import hardware, percentiles, write_result

log = logging.getLogger("cli_libraries")

_ARGPARSE = '''
import argparse, typing
from simclr_embed.service.settings import GROUPS
p = argparse.ArgumentParser(prog="simclr-embed")
serve = p.add_subparsers(dest="command", required=True).add_parser("serve")
serve.add_argument("bundles", nargs="*")
for g in GROUPS:
    group = serve.add_argument_group(g.__name__, g.__doc__)
    for name, f in g.model_fields.items():
        literal = typing.get_origin(f.annotation) is typing.Literal
        group.add_argument("--" + name.replace("_", "-"), default=f.default, help=f.description,
                           choices=typing.get_args(f.annotation) if literal else None)
a = p.parse_args()
print("ran", a.bundles, a.port)
'''
_PYDANTIC_SETTINGS = '''
from pydantic import BaseModel
from pydantic_settings import CliApp, CliPositionalArg, CliSubCommand
from simclr_embed.service.settings import Settings
class Serve(Settings, cli_kebab_case=True):
    bundles: CliPositionalArg[list[str]] = []
    def cli_cmd(self) -> None: print("ran", self.bundles, self.port)
class Main(BaseModel):
    serve: CliSubCommand[Serve]
    def cli_cmd(self) -> None: CliApp.run_subcommand(self)
CliApp.run(Main)
'''
_CYCLOPTS = '''
import inspect
from typing import Annotated
import cyclopts
from simclr_embed.service.settings import GROUPS
app = cyclopts.App(name="simclr-embed")
def serve(*bundles: str, **given) -> None: print("ran", list(bundles), given.get("port"))
params = [inspect.Parameter("bundles", inspect.Parameter.VAR_POSITIONAL, annotation=str)]
for g in GROUPS:
    group = cyclopts.Group(g.__name__, help=g.__doc__)
    for name, f in g.model_fields.items():
        flag = cyclopts.Parameter(group=group, help=f.description)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=Annotated[f.annotation, flag]))
serve.__signature__ = inspect.Signature(params)
serve.__annotations__ = {p.name: p.annotation for p in params}
app.command(serve)
app()
'''
_TYPER = '''
import inspect
import typer
from simclr_embed.service.settings import GROUPS
app = typer.Typer()
def serve(**kw) -> None: print("ran", kw.get("bundles"), kw.get("port"))
params = [inspect.Parameter("bundles", inspect.Parameter.KEYWORD_ONLY,
                            default=typer.Argument(None), annotation=list[str])]
for g in GROUPS:
    for name, f in g.model_fields.items():  # typer takes no Literal or SecretStr: str for all
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str,
            default=typer.Option(None, help=f.description, rich_help_panel=g.__name__)))
serve.__signature__ = inspect.Signature(params)
app.command()(serve)
app.command()(lambda: None)  # a second command keeps serve a subcommand
app()
'''
_TYRO = '''
import tyro
from simclr_embed.service.settings import Settings
def serve(bundles: tyro.conf.Positional[list[str]], settings: Settings) -> None:
    print("ran", bundles, settings.port)
tyro.extras.subcommand_cli_from_dict({"serve": serve})
'''
PROGRAMS = {"argparse": (None, _ARGPARSE), "pydantic-settings": ("pydantic_settings",
            _PYDANTIC_SETTINGS), "cyclopts": ("cyclopts", _CYCLOPTS), "typer": ("typer", _TYPER),
            "tyro": ("tyro", _TYRO)}
LINES = {"serve --help": ["serve", "--help"],
         "serve A --port 8001 B": ["serve", "A", "--port", "8001", "B"]}


def run_once(script: Path, argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
    return (time.perf_counter() - start) * 1e3, done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results/cli_libraries.json")
    args = p.parse_args()
    configure_logging()
    present = {n: src for n, (mod, src) in PROGRAMS.items()
               if mod is None or importlib.util.find_spec(mod)}
    times: dict[str, dict[str, list[float]]] = {n: {line: [] for line in LINES} for n in present}
    result: dict = {"hardware": hardware(), "rounds": args.rounds,
                    "missing": sorted(set(PROGRAMS) - set(present)), "python": sys.version,
                    "versions": {n: version(PROGRAMS[n][0] or "pip") for n in present
                                 if PROGRAMS[n][0]}, "libraries": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # Not named after its library: the script's folder comes first on sys.path.
        scripts = {n: Path(tmp, "cli_" + n.replace("-", "_") + ".py") for n in present}
        for n, src in present.items():
            scripts[n].write_text(src)
        for n in present:  # a first start fills the bytecode caches, for all alike
            run_once(scripts[n], ["serve", "--help"])
        for r in range(args.rounds):
            for n in present:
                for line, argv in LINES.items():
                    ms, done = run_once(scripts[n], argv)
                    times[n][line].append(ms)
                    if r == 0 and line.startswith("serve A"):
                        said = (done.stdout.strip() or done.stderr.strip()).splitlines()
                        result["libraries"][n] = {"interleaved_line": said[-1] if said else ""}
    for n in present:
        for line in LINES:
            result["libraries"][n][line] = percentiles(times[n][line])
        log.info("%-18s serve --help p50 %6.1f ms; serve A --port 8001 B: %s", n,
                 result["libraries"][n]["serve --help"]["p50_ms"],
                 result["libraries"][n]["interleaved_line"])
    write_result(args.out, result)


if __name__ == "__main__":
    main()
