"""Shared fixtures: every test runs offline, with caches and the working directory under tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_HF_HOME: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Hugging Face libraries read these when first imported, so they are set before any test module loads."""
    global _HF_HOME
    _HF_HOME = tempfile.mkdtemp(prefix="tstool-tests-hf-")
    os.environ.update(
        {
            "HF_HOME": _HF_HOME,
            "HF_DATASETS_CACHE": os.path.join(_HF_HOME, "datasets"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HF_HOME:
        shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Token caches and relative paths (run folders, --out files) land in this test's tmp_path."""
    monkeypatch.setenv("TSTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TSTOOL_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    """The real GPT-2 vocab.json + merges.txt (see fixtures/gpt2/SOURCE.md)."""
    return FIXTURES / "gpt2"


Invoke = Callable[..., Result]


@pytest.fixture
def cli() -> Invoke:
    """`cli("dataset-stats", "--limit", 5)` runs the app in-process; stdout and stderr stay apart."""
    from tstool.cli.app import app

    runner = CliRunner()

    def invoke(*args: Any) -> Result:
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def cli_json(cli: Invoke) -> Callable[..., Any]:
    """Runs a command with --json, checks its exit code (default 0) and parses the one document on stdout."""

    def invoke(*args: Any, code: int = 0) -> Any:
        result = cli(*args, "--json")
        assert result.exit_code == code, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return json.loads(result.stdout)

    return invoke


@pytest.fixture
def user_error() -> Callable[..., str]:
    """Checks a bad-input failure: exit 2, `Error: ...` on stderr naming the problem, no traceback.

    The message is one line unless `one_line=False` (config validation lists one problem per line).
    Returns stderr for further checks.
    """

    def check(result: Result, *fragments: str, one_line: bool = True) -> str:
        assert result.exit_code == 2, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert lines and lines[0].startswith("Error: "), result.stderr
        assert len(lines) == 1 or not one_line, result.stderr
        assert "Traceback" not in result.output
        for fragment in fragments:
            assert fragment in result.stderr, result.stderr
        return result.stderr

    return check


@pytest.fixture(scope="session")
def eval_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Run folders of the debug preset, trained in-process once per session: `eval_runs("base")`, or
    `eval_runs("weighted")` (article weight 3, 10 steps) as a second run to compare or overlay."""
    import torch

    from tstool.config import resolve
    from tstool.training.trainer import RunOptions, train

    overrides = {"base": {}, "weighted": {"train.article_weight": 3.0, "train.max_steps": 10}}
    root = tmp_path_factory.mktemp("eval_runs")
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            threads = torch.get_num_threads()  # one thread trains a model this small faster; restored after
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("TSTOOL_CACHE", str(root / "cache"))
                train(resolve("debug", {"train.threads": 1, **overrides[name]}), RunOptions(out_dir=root / name))
            torch.set_num_threads(threads)
            runs[name] = root / name
        return runs[name]

    return get


@pytest.fixture(scope="session")
def tiny_run(eval_runs: Callable[[str], Path]) -> Path:
    """A trained debug-preset run folder (max_seq_len 32), shared with `eval_runs("base")`."""
    return eval_runs("base")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one torch thread, and the test machine's cores are shared; restored after
    (training with train.threads set would otherwise leave the whole session on that many threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
