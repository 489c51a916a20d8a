"""The package as users install it: a wheel built from the repository, installed away from the source
tree, must carry the presets, the shipped tokenizer and the bundled stories, and train from them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = (
    "tstool/presets/debug.yaml",
    "tstool/presets/tiny.yaml",
    "tstool/resources/tokenizer/tokenizer.json",
    "tstool/resources/tokenizer/LICENSE.md",
    "tstool/resources/tinystories/train-000.txt.gz",
    "tstool/resources/tinystories/train-sample-001.txt.gz",
    "tstool/resources/tinystories/train-sample-002.txt.gz",
    "tstool/resources/tinystories/LICENSE.md",
)
LICENCES = ("tstool/resources/tinystories/LICENSE.md", "tstool/resources/tokenizer/LICENSE.md")
# Where the installed copy finds its data: each must lie inside the installed package.
PROBE = (
    "import json, tstool, tstool.config as c, tstool.data.corpus as d, tstool.data.tokenizer as t; "
    "print(json.dumps([tstool.__file__, str(c.PRESET_DIR), str(d.BUNDLED_DIR), str(t.SHIPPED_DIR)]))"
)

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def copy_sources(dest: Path) -> Path:
    """The repository's top-level files and package, so that building leaves nothing (build/, egg-info)
    in the shared working tree and no stale build/lib from an earlier build can slip into the wheel."""
    dest.mkdir()
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    shutil.copytree(ROOT / "tstool", dest / "tstool", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@dataclass(frozen=True)
class Built:
    wheel: Path
    log: str  # the build backend's output (pip -v)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A wheel of the repository, built offline with this environment's setuptools (the dev extra's)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = copy_sources(tmp / "src")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    result = run(
        *pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-v", "-w", tmp / "dist", source, cwd=tmp
    )
    (wheel,) = (tmp / "dist").glob("tstool-*.whl")
    return Built(wheel, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def wheel(built: Built) -> Path:
    return built.wheel


def test_build_warns_of_nothing_deprecated(built: Built) -> None:
    # setuptools stops building deprecated metadata (a `project.license` table) on 2027-02-18. Its
    # warnings read `SetuptoolsDeprecationWarning:`, or `BuildBackendWarning:` when pip relays them.
    warnings = re.findall(r".*(?:[A-Za-z]Warning:|deprecated).*", built.log)
    assert not warnings, "\n".join(warnings)


def test_wheel_holds_presets_resources_and_licences(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode("utf-8").split("\n\n", 1)[0].splitlines()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode("utf-8")
    assert set(PACKAGE_DATA) <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    assert "License-Expression: MIT AND CDLA-Sharing-1.0" in headers
    assert {f"License-File: {path}" for path in LICENCES} <= set(headers)
    assert not [h for h in headers if h.startswith("License:")]  # the deprecated free-text field
    assert "tstool = tstool.cli.app:main" in scripts


def test_installed_wheel_trains_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    run(*pip, "install", "--no-deps", "--no-index", "-q", "--target", site, wheel, cwd=tmp_path)
    # This environment's dependencies (torch, ...) with the installed copy first on the path, ahead of
    # the editable install of the source tree.
    env = {**os.environ, "PYTHONPATH": str(site)}

    paths = [Path(p) for p in json.loads(run(sys.executable, "-c", PROBE, cwd=work, env=env).stdout)]
    assert all(p.is_relative_to(site / "tstool") for p in paths), paths
    assert not any(p.is_relative_to(ROOT) for p in paths), paths

    result = run(
        site / "bin" / "tstool",
        *("train", "--config", "debug", "--max-steps", "2", "--out-dir", "run", "--set", "train.threads=1", "--json"),
        cwd=work,
        env=env,
    )
    summary = json.loads(result.stdout)
    assert summary["step"] == 2 and summary["val"]["loss_unweighted"] > 0
    assert (work / summary["checkpoint"]).is_dir()
