"""Reliability: SIGKILL anywhere then resume, SIGINT, untrusted checkpoints and YAML, non-finite losses.

The SIGTERM, crash-mid-save and full-disk basics live in test_train.py; these tests extend them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tstool.faults import CRASH_EXIT_CODE
from tstool.runs import checkpoint as ckpt
from tstool.runs.metrics_log import read_metrics

DEBUG = ["--config", "debug"]
CRASH_POINTS = ("save:weights", "save:state", "save:before-rename", "save:before-link")
LOSS_KEYS = ("loss", "loss_unweighted", "article_loss", "other_loss", "grad_norm", "bpb")


def start(args: list[Any], env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m tstool ARGS --json` in the background; --json keeps stdout to one document, so no pipe fills."""
    return subprocess.Popen(
        [sys.executable, "-m", "tstool", *map(str, args), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def inode(path: Path) -> int | None:
    return path.stat().st_ino if path.exists() else None


def wait_for_log(
    metrics: Path, proc: subprocess.Popen, old_inode: int | None, step: int | None = None, timeout: float = 60
) -> None:
    """Poll until this process has opened its metrics.jsonl (and, with `step`, logged that step or later).

    A starting run rewrites the file (a new inode), so records left by an earlier process do not count.
    The wait also ends if the process does.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if inode(metrics) != old_inode and (step is None or any(r["step"] >= step for r in read_metrics(metrics))):
            return
        assert time.monotonic() < deadline, f"no metrics (step {step}) after {timeout}s"
        time.sleep(0.01)


def record_kind(record: dict[str, Any]) -> str:
    return record.get("event") or record.get("split") or "train"


def checked_metrics(path: Path) -> list[dict[str, Any]]:
    """Every line of metrics.jsonl is one whole JSON object, and steps strictly increase per record kind."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    last: dict[str, int] = {}
    for record in records:
        kind = record_kind(record)
        assert record["step"] > last.get(kind, 0), f"{kind} step {record['step']} after {last.get(kind)}"
        last[kind] = record["step"]
    return records


def latest_step(run: Path) -> int:
    """The step of the run's latest checkpoint, which must load whole (weights and state); 0 if none yet."""
    if not (run / ckpt.CKPT_DIR / "latest").exists():
        return 0
    loaded = ckpt.load_checkpoint(run, with_state=True)
    assert loaded.state is not None and loaded.state["step"] == loaded.meta["step"]
    return loaded.meta["step"]


def losses(run: Path) -> dict[tuple[str, int], dict[str, float]]:
    return {
        (record_kind(r), r["step"]): {k: r[k] for k in LOSS_KEYS if k in r} for r in read_metrics(run / "metrics.jsonl")
    }


# ---- crash safety ----------------------------------------------------------------------------------

# Checkpoints every 3 steps so that kills land before, inside and after saves; one torch thread each.
CRASH_RUN = ["--max-steps", 150, "--set", "train.log_interval=1", "--set", "train.ckpt_interval=3"]
CRASH_RUN += ["--set", "train.eval_interval=20", "--set", "train.threads=1"]


def kill_plan(seed: int = 7) -> list[tuple[str, Any]]:
    """Twenty kills: each crash point inside a save twice; SIGKILL after N new metric lines; SIGKILL a random
    moment after training began (mid-step, mid-save, mid-evaluation); SIGKILL a random moment after spawning
    (during imports, data loading or the run-folder writes)."""
    rng = random.Random(seed)
    plan: list[tuple[str, Any]] = [("fault", point) for point in CRASH_POINTS * 2]
    plan += [("lines", rng.randint(1, 8)) for _ in range(5)]
    plan += [("training", rng.uniform(0.0, 0.3)) for _ in range(5)]
    plan += [("startup", rng.uniform(0.2, 2.0)) for _ in range(2)]
    rng.shuffle(plan)
    return plan


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_twenty_kills_at_varied_points_never_lose_or_repeat_a_step(cli_json) -> None:
    run, metrics = Path("run"), Path("run/metrics.jsonl")
    command = ["train", *DEBUG, *CRASH_RUN]
    straight = start([*command, "--out-dir", "straight"])  # the reference, alongside (kills mostly wait)
    resume = [*command, "--out-dir", run, "--resume", "auto"]
    for kind, value in kill_plan():
        resumed_from, old_inode = latest_step(run), inode(metrics)
        kept = [r for r in checked_metrics(metrics) if r["step"] <= resumed_from]
        proc = start(resume, env={"TSTOOL_FAULT": value} if kind == "fault" else None)
        if kind == "lines":
            wait_for_log(metrics, proc, old_inode, step=resumed_from + value)
        elif kind == "training":
            wait_for_log(metrics, proc, old_inode)
            time.sleep(value)
        elif kind == "startup":
            time.sleep(value)
        if kind != "fault":
            proc.kill()
        _, stderr = proc.communicate(timeout=60)
        expected = CRASH_EXIT_CODE if kind == "fault" else -signal.SIGKILL
        assert proc.returncode == expected, f"{kind} {value}: exit {proc.returncode}\n{stderr}"
        # The resumed process kept every record up to its checkpoint and wrote none twice.
        assert [r for r in checked_metrics(metrics) if r["step"] <= resumed_from] == kept, (kind, value)
        assert latest_step(run) >= resumed_from

    assert cli_json(*resume)["step"] == 150 and latest_step(run) == 150
    assert straight.wait(timeout=120) == 0, straight.stderr.read() if straight.stderr else ""
    checked_metrics(metrics)
    assert not list((run / ckpt.CKPT_DIR).glob(".step-*"))  # no half-written checkpoint left behind
    # Twenty crashes later, every loss matches the uninterrupted run's exactly.
    assert losses(run) == losses(Path("straight"))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_sigint_saves_a_resumable_checkpoint_and_exits_130(cli_json) -> None:
    args = ["train", *DEBUG, "--max-steps", 100_000, "--out-dir", "run", "--set", "train.log_interval=1"]
    args += ["--set", "train.threads=1"]
    proc = start(args)
    wait_for_log(Path("run/metrics.jsonl"), proc, None, step=2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    [message] = stderr.strip().splitlines()
    assert message.startswith("Error: stopped by SIGINT") and "--resume auto" in message
    step = latest_step(Path("run"))
    assert step >= 2
    assert cli_json(*args, "--resume", "auto", "--stop-after", 2)["step"] == step + 2


# ---- non-finite losses -----------------------------------------------------------------------------

NAN_RUN = ["--max-steps", 20, "--out-dir", "run", "--set", "train.log_interval=1", "--set", "train.ckpt_interval=2"]
NAN_RUN += ["--set", "train.max_bad_steps=3"]


def skipped(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "skipped"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_k_non_finite_steps_in_a_row_stop_the_run_with_the_last_good_checkpoint(cli, monkeypatch) -> None:
    # Optimizer steps 13.. have a NaN loss: 13 and 14 are skipped (14 still saves a checkpoint), 15 halts.
    monkeypatch.setenv("TSTOOL_FAULT", "nan@12-19")
    result = cli("train", *DEBUG, *NAN_RUN, "--json")
    assert result.exit_code == 1, result.output
    [message] = result.stderr.strip().splitlines()
    assert message.startswith("Error: 3 non-finite losses in a row at step 15") and "step-0000014" in message
    assert [(r["step"], r["bad_steps"]) for r in skipped(Path("run"))] == [(13, 1), (14, 2), (15, 3)]
    assert [r["bad_steps"] for r in read_metrics(Path("run/metrics.jsonl")) if r["step"] == 14 and "tokens" in r] == [2]
    # Skipped steps left the weights exactly as the last good step (12) made them, and finite.
    before, after = (load_file(f"run/checkpoints/step-{s:07d}/model.safetensors") for s in (12, 14))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(t).all() for t in after.values())
    assert latest_step(Path("run")) == 14


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_fewer_than_k_non_finite_steps_are_skipped_and_the_run_finishes(cli_json, monkeypatch) -> None:
    monkeypatch.setenv("TSTOOL_FAULT", "nan@3-4")
    out = cli_json("train", *DEBUG, *NAN_RUN)
    assert out["step"] == 20 and out["bad_steps"] == 0  # the count resets after a good step
    assert [(r["step"], r["bad_steps"]) for r in skipped(Path("run"))] == [(4, 1), (5, 2)]
    weights = ckpt.load_checkpoint(Path("run")).weights
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_pruning_clears_what_a_crash_mid_save_left_behind(tmp_path: Path) -> None:
    saved = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"step": 1}, {})
    root = tmp_path / ckpt.CKPT_DIR
    (root / ".step-0000002.999.tmp").mkdir()  # killed while writing the next checkpoint
    os.symlink("step-0000002", root / ".latest.999.tmp")  # killed between symlink and rename
    os.symlink("step-0000001", root / ".best.999.tmp")
    ckpt.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000001"]
    assert (root / "latest").resolve() == saved.resolve()
