"""A wheel built from the repository installs one top-level name, ours, and no tests; the
console script points into it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def source_tree(dest: Path) -> Path:
    """The files git would commit, copied: a build in the checkout would reuse its build/
    folder, whose stale modules end up in the wheel."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith("benchmarks/results/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_wheel_holds_only_our_namespace(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("simclr_embed-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"simclr_embed", next(t for t in tops if t.endswith(".dist-info"))}
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)
    for stage in ("training", "export", "service", "benchmarks"):
        assert f"simclr_embed/{stage}/__init__.py" in names
    # every benchmark module but the archive's ships (a subpackage left out of pyproject.toml's
    # list would be missing from the wheel while an editable install still finds it)
    bench = REPO / "benchmarks"
    shipped = {f"simclr_embed/benchmarks/{p.relative_to(bench).as_posix()}"
               for p in bench.rglob("*.py") if "archive" not in p.parts}
    assert shipped <= set(names), shipped - set(names)
    assert not any("/archive/" in n for n in names)
    assert "simclr_embed/service/static/index.html" in names
    entry = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "simclr-embed = simclr_embed.cli:main" in entry


def test_container_lock_covers_the_serving_dependencies() -> None:
    """requirements/service.lock (uv pip compile, hashes) pins every serving dependency, the
    PostgreSQL and tracing extras included;
    regenerate it when pyproject.toml changes (docs/deployment.md)."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["postgres"] + extras["tracing"]
    lock = (REPO / "requirements/service.lock").read_text()
    pinned = {re.sub(r"[-_.]+", "-", m.lower())
              for m in re.findall(r"^([A-Za-z0-9_.\-]+)==", lock, re.MULTILINE)}
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=~! ]", req)[0].lower())
        assert name in pinned, f"{name} is not in requirements/service.lock"
    assert lock.count("--hash=sha256:") >= len(pinned)
