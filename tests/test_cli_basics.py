"""The CLI as a whole: every command has help, --version works, bad input is one `Error:` line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from tstool import __version__
from tstool.cli.app import app


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group, sub-apps included (groups have `commands`; Typer bundles its own Click)."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def test_expected_commands_are_registered() -> None:
    assert {("tokenizer", "train"), ("diagnose-tokenizer",), ("dataset-stats",), ("config", "show")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "tstool")
def test_help(cli, path: tuple[str, ...]) -> None:
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"tstool {__version__}"


@pytest.mark.slow
def test_python_m_tstool() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "tstool", "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "dataset-stats" in result.stdout


# name -> (arguments, with {tmp} for the test's folder, and what the one-line message must hold)
BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "missing file": (["dataset-stats", "--data", "{tmp}/nope.txt"], "does not exist"),
    "empty file": (["dataset-stats", "--data", "{tmp}/empty.txt"], "is empty"),
    "binary file": (["dataset-stats", "--data", "{tmp}/binary.txt"], "binary"),
    "non-UTF-8 file": (["dataset-stats", "--data", "{tmp}/latin1.txt"], "not UTF-8"),
    "unreachable dataset": (
        ["dataset-stats", "--dataset", "no-such-user/no-such-dataset-tstool"],
        "could not be loaded",
    ),
    "missing dataset folder": (["dataset-stats", "--dataset", "{tmp}/no-such-folder"], "could not be loaded"),
    "unknown split": (["dataset-stats", "--split", "test"], "unknown split 'test'"),
    "tokenizer path missing": (["dataset-stats", "--tokenizer", "{tmp}/no-tok"], "does not exist"),
    "tokenizer not JSON": (["diagnose-tokenizer", "--tokenizer", "{tmp}/broken.json", "--no-corpus"], "not a JSON"),
    "tokenizer.json binary": (["diagnose-tokenizer", "--tokenizer", "{tmp}/notjson"], "not a JSON"),
    "diagnose missing data": (["diagnose-tokenizer", "--data", "{tmp}/nope.txt"], "does not exist"),
    "tokenizer train empty data": (
        ["tokenizer", "train", "--data", "{tmp}/empty.txt", "--vocab-size", "300", "--out", "{tmp}/t"],
        "is empty",
    ),
    "out is a folder": (["dataset-stats", "--limit", "2", "--out", "{tmp}"], "is a folder"),
    "out under a file": (["dataset-stats", "--limit", "2", "--out", "{tmp}/empty.txt/stats.json"], "is a file"),
}


def test_split_validation_is_val_for_dataset_stats(cli_json) -> None:
    val = cli_json("dataset-stats", "--split", "val", "--limit", 3)
    assert cli_json("dataset-stats", "--split", "validation", "--limit", 3) == val


def test_split_validation_is_val_for_eval(tiny_run: Path, cli_json, user_error, cli) -> None:
    doc = cli_json("eval", "--checkpoint", tiny_run, "--split", "validation", "--max-blocks", 2)
    assert doc["data"]["split"] == "val"
    assert doc["metrics"] == cli_json("eval", "--checkpoint", tiny_run, "--split", "val", "--max-blocks", 2)["metrics"]
    user_error(cli("eval", "--checkpoint", tiny_run, "--split", "valid"), "unknown split 'valid'")


@pytest.fixture
def bad_files(tmp_path: Path) -> Path:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"Once upon\x00\x01\x02 a time")
    (tmp_path / "latin1.txt").write_bytes("Once upon a time in a caf\u00e9.".encode("latin-1"))
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "notjson").mkdir()
    (tmp_path / "notjson" / "tokenizer.json").write_bytes(b"\x89PNG\r\n")
    return tmp_path


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_error_line(cli, user_error, bad_files: Path, name: str) -> None:
    template, fragment = BAD_INPUTS[name]
    args = [arg.format(tmp=bad_files) for arg in template]
    user_error(cli(*args), fragment)
    user_error(cli(*args, "--json"), fragment)
