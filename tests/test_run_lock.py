"""One run folder, one writer (issue 21): a second `train` on a live run folder is refused with exit 2,
a killed owner leaves no stale lock, readers read one whole checkpoint of a run that saves and prunes
every step, a checkpoint folder deleted mid-save is not called a full disk, and metrics.jsonl with a
line still being appended reads cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import torch
import yaml

from tstool.analysis.compare import training_time
from tstool.analysis.plot import load_curves, plot_runs
from tstool.errors import CheckpointError, RunLocked
from tstool.runs import checkpoint as ckpt
from tstool.runs.lock import LOCK_FILE, RunLock
from tstool.runs.manager import CheckpointManager
from tstool.runs.metrics_log import read_metrics

DEBUG = ["--config", "debug"]
# A run that trains until stopped, logging every step, on one torch thread.
BUSY = ["--max-steps", 100_000, "--set", "train.log_interval=1", "--set", "train.threads=1"]
# ... that also checkpoints every step and keeps one numbered checkpoint: `latest` moves and the old one is
# pruned all the time.
CHURN = [*BUSY, "--set", "train.ckpt_interval=1", "--set", "train.keep_last=1", "--set", "train.eval_interval=1000"]
RUN, METRICS = Path("run"), Path("run/metrics.jsonl")


def start(args: list[Any]) -> subprocess.Popen:
    """`python -m tstool ARGS --json` in the background; --json keeps stdout to one document, so no pipe fills."""
    return subprocess.Popen(
        [sys.executable, "-m", "tstool", *map(str, args), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll `ready` while `proc` runs; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the process ended ({proc.returncode}) before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.02)


def logged_step() -> int:
    return max((r["step"] for r in read_metrics(METRICS)), default=0)


def latest_step() -> int:
    """The step `latest` names, from the link alone (the folder may be pruned a moment later)."""
    latest = RUN / ckpt.CKPT_DIR / "latest"
    return int(os.readlink(latest).removeprefix("step-")) if latest.is_symlink() else 0


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGINT (a clean, checkpointed stop) and the exit code and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def one_writer_metrics(path: Path) -> list[dict[str, Any]]:
    """Every line whole, and the train records exactly steps 1, 2, 3, ...: one process wrote them, once each."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    train = [r["step"] for r in records if "split" not in r and "event" not in r]
    assert train == list(range(1, len(train) + 1)), train
    return records


def refusal(stderr: str, holder: int) -> str:
    """The one `Error:` line a second writer gets: who holds the run (pid, host, start time) and what to do."""
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"Error: run folder {RUN} is being written by process {holder} on {socket.gethostname()}")
    assert "(started " in line and "wait for it to finish" in line and f"kill {holder}" in line
    assert "another --out-dir" in line
    return line


# ---- the lock itself --------------------------------------------------------------------------------


def test_a_second_lock_is_refused_naming_the_holder_and_release_leaves_the_folder_as_it_was() -> None:
    lock = RunLock.acquire(RUN)  # creates the folder, which held nothing before
    holder = json.loads((RUN / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    with pytest.raises(RunLocked, match=f"is being written by process {os.getpid()}"):
        RunLock.acquire(RUN)  # another open file: refused even within one process
    lock.release()
    assert not RUN.exists()  # a start that failed leaves no folder behind
    RUN.mkdir()
    (RUN / "keep.txt").write_text("x")
    with RunLock.acquire(RUN):
        pass
    assert [p.name for p in RUN.iterdir()] == ["keep.txt"]


def test_a_killed_holder_leaves_no_stale_lock() -> None:
    code = "import sys, time; from pathlib import Path; from tstool.runs.lock import RunLock\n"
    code += "lock = RunLock.acquire(Path('run')); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(RunLocked, match=f"process {holder.pid}"):
            RunLock.acquire(RUN)
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((RUN / LOCK_FILE).read_text())["pid"] == holder.pid  # the file stays; nobody holds it
    with RunLock.acquire(RUN):
        assert json.loads((RUN / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_train_refuses_a_held_run_folder_and_writes_nothing(cli, user_error) -> None:
    with RunLock.acquire(RUN):
        for mode in ([], ["--resume", "auto"], ["--overwrite"]):
            user_error(cli("train", *DEBUG, "--out-dir", RUN, *mode, "--json"), f"process {os.getpid()}")
        assert [p.name for p in RUN.iterdir()] == [LOCK_FILE]


def test_experiment_trains_its_runs_under_the_same_lock(cli, user_error, monkeypatch) -> None:
    """`tstool experiment` trains through `train()`: a run folder another writer took first is refused."""
    real, taken = RunLock.acquire.__func__, []

    def taken_first(cls: type[RunLock], run_path: Path) -> RunLock:
        taken.append(real(cls, run_path))  # another writer got there a moment earlier
        return real(cls, run_path)

    monkeypatch.setattr(RunLock, "acquire", classmethod(taken_first))
    try:
        user_error(cli("experiment", *DEBUG, "--out-dir", "exp", "--max-steps", 2, "--json"), "is being written by")
        [other] = taken
        assert other.path.parent.parent == Path("exp") and [p.name for p in other.path.parent.iterdir()] == [LOCK_FILE]
    finally:
        for lock in taken:
            lock.release()


# ---- writers in separate processes ------------------------------------------------------------------


@pytest.mark.slow
def test_two_trainers_started_together_one_runs_the_other_exits_2_writing_nothing() -> None:
    # Different seeds, so that anything the refused one wrote would show in config.yaml or the checkpoints.
    procs = {seed: start(["train", *DEBUG, *BUSY, "--seed", seed, "--out-dir", RUN]) for seed in (1, 2)}
    deadline = time.monotonic() + 120
    while all(p.poll() is None for p in procs.values()):
        assert time.monotonic() < deadline, "neither trainer was refused"
        time.sleep(0.05)
    [(lost_seed, loser)] = [(s, p) for s, p in procs.items() if p.poll() is not None]
    [(won_seed, winner)] = [(s, p) for s, p in procs.items() if p is not loser]
    stdout, stderr = loser.communicate()
    assert loser.returncode == 2 and stdout == "" and "Traceback" not in stderr, stderr
    refusal(stderr, winner.pid)
    try:
        wait_until(lambda: logged_step() >= 3, winner, "the winner's step 3")
        assert winner.poll() is None
    finally:
        code, stderr = stop(winner)
    assert code == 130, stderr
    assert yaml.safe_load((RUN / "config.yaml").read_text())["train"]["seed"] == won_seed != lost_seed
    assert ckpt.load_checkpoint(RUN).meta["config"]["train"]["seed"] == won_seed
    one_writer_metrics(METRICS)
    assert not (RUN / LOCK_FILE).exists()  # released on a normal exit


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_resume_and_overwrite_of_a_live_run_are_refused_and_leave_it_training(cli, user_error) -> None:
    owner = start(["train", *DEBUG, *BUSY, "--set", "train.ckpt_interval=2", "--out-dir", RUN])
    try:
        wait_until(lambda: (RUN / ckpt.CKPT_DIR / "latest").exists(), owner, "a first checkpoint")
        lock = (RUN / LOCK_FILE).read_bytes()
        for mode in (["--resume", "auto"], ["--overwrite"], []):
            refusal(user_error(cli("train", *DEBUG, *BUSY, "--out-dir", RUN, *mode, "--json")), owner.pid)
        assert (RUN / LOCK_FILE).read_bytes() == lock  # --overwrite deleted nothing, the lock file least of all
        step = logged_step()
        wait_until(lambda: logged_step() >= step + 3, owner, "three more steps")  # the owner trains on
    finally:
        code, stderr = stop(owner)
    assert code == 130, stderr
    one_writer_metrics(METRICS)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_after_sigkill_of_the_owner_resume_auto_takes_the_run_over(cli_json) -> None:
    args = ["train", *DEBUG, *BUSY, "--set", "train.ckpt_interval=2", "--out-dir", RUN]
    owner = start(args)
    wait_until(lambda: latest_step() >= 4, owner, "the step 4 checkpoint")
    owner.kill()
    owner.wait(timeout=60)
    assert json.loads((RUN / LOCK_FILE).read_text())["pid"] == owner.pid  # left behind, but held by nobody
    step = ckpt.load_checkpoint(RUN).step
    assert cli_json(*args, "--resume", "auto", "--stop-after", 2)["step"] == step + 2
    assert not (RUN / LOCK_FILE).exists()


# ---- readers of a run that is training --------------------------------------------------------------


def check_read(document: dict[str, Any], seen: list[int]) -> None:
    """A command's output names the step it read and the step folder it came from."""
    step = document["step"]
    assert isinstance(step, int) and Path(document["checkpoint"]).name == ckpt.step_dir_name(step), document
    seen.append(step)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_readers_read_one_whole_checkpoint_of_a_run_that_prunes_every_step(cli, cli_json) -> None:
    owner = start(["train", *DEBUG, *CHURN, "--out-dir", RUN])
    seen: list[int] = []
    try:
        wait_until(lambda: (RUN / ckpt.CKPT_DIR / "latest").exists(), owner, "a first checkpoint")
        for _ in range(4):
            check_read(cli_json("generate", "-c", RUN, "-p", "Once", "--max-new-tokens", 4, "--device", "cpu"), seen)
            # exit 1 would be the shift probe's verdict on a barely trained model, not a bad read
            evaluated = cli("eval", "--checkpoint", RUN, "--max-blocks", 2, "--device", "cpu", "--json")
            assert evaluated.exit_code in (0, 1), evaluated.stderr
            check_read(json.loads(evaluated.stdout), seen)
        check_read(cli_json("export-hf", "-c", RUN, "--out", "hf"), seen)
        plotted = cli_json("plot", RUN, "--out", "curves.png")["runs"][0]
        assert plotted["last_step"] >= max(seen)
        # Many whole loads in a row: weights, meta and state always from the one folder `latest` named.
        for _ in range(500):
            loaded = ckpt.load_checkpoint(RUN, with_state=True)
            assert loaded.state is not None and loaded.state["step"] == loaded.step
            assert loaded.path.name == ckpt.step_dir_name(loaded.step)
            seen.append(loaded.step)
        assert owner.poll() is None
    finally:
        code, stderr = stop(owner)
    assert code == 130, stderr
    assert seen == sorted(seen) and len(set(seen)) > 5  # the run moved on while it was read


# ---- checkpoints vanishing under a reader or a writer -----------------------------------------------

WEIGHTS = {"w": torch.arange(4.0)}
META = {"config": {}, "tokenizer_sha256": "0" * 64, "vocab_size": 4, "config_version": 1}


def save(run: Path, step: int) -> Path:
    return ckpt.save_checkpoint(run, step, {"w": WEIGHTS["w"] + step}, {"step": step}, META)


def test_a_reader_whose_checkpoint_is_pruned_mid_read_reads_the_new_latest_whole(monkeypatch) -> None:
    first = save(RUN, 1)
    real_open, opened = ckpt._open, []

    def prune_first(path: Path) -> BinaryIO:
        opened.append(path)
        if len(opened) == 1:  # the run saves step 2 and prunes step 1 between `latest` resolving and the read
            save(RUN, 2)
            ckpt.prune(RUN, keep_last=1)
        return real_open(path)

    monkeypatch.setattr(ckpt, "_open", prune_first)
    loaded = ckpt.load_checkpoint(RUN)
    assert not first.exists() and [p.parent.name for p in opened] == ["step-0000001", "step-0000002"]
    assert loaded.step == 2 and loaded.path.name == "step-0000002"
    assert torch.equal(loaded.weights["w"], WEIGHTS["w"] + 2)


def test_a_named_step_folder_deleted_mid_read_and_a_damaged_one_say_what_happened(monkeypatch) -> None:
    first, real_open = save(RUN, 1), ckpt._open

    def delete_first(path: Path) -> BinaryIO:
        shutil.rmtree(first)
        return real_open(path)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "_open", delete_first)
        with pytest.raises(CheckpointError, match="was deleted while it was read .* pass the run folder"):
            ckpt.load_checkpoint(first)
    (save(RUN, 2) / ckpt.WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing: the checkpoint is damaged"):
        ckpt.load_checkpoint(RUN)


def vanish_tmp(run: Path) -> None:
    for tmp in (run / ckpt.CKPT_DIR).glob(".step-*.tmp"):
        shutil.rmtree(tmp)


@pytest.mark.parametrize("where", ["before the weights", "before the state"])
def test_a_checkpoint_folder_that_vanishes_mid_save_is_not_called_a_full_disk(monkeypatch, where: str) -> None:
    manager = CheckpointManager(RUN, interval=1, keep_last=1)
    previous = manager.save(1, WEIGHTS, {"step": 1}, {}, best=False)
    if where == "before the weights":  # safetensors reports it as SafetensorError, not OSError
        real_save = ckpt.save_file

        def save_file(tensors: dict[str, torch.Tensor], filename: str) -> None:
            vanish_tmp(RUN)
            real_save(tensors, filename)

        monkeypatch.setattr(ckpt, "save_file", save_file)
    else:
        monkeypatch.setattr(ckpt, "fault_point", lambda name: vanish_tmp(RUN) if name == "save:weights" else None)
    with pytest.raises(CheckpointError) as caught:
        manager.save(2, WEIGHTS, {"step": 2}, {}, best=False)
    message = str(caught.value)
    assert "disk space" not in message and "\n" not in message
    assert message.startswith("saving the step 2 checkpoint failed: ") and "vanished while it was written" in message
    assert f"the previous checkpoint {previous.resolve()} is intact" in message and "--resume auto" in message


def test_only_a_full_disk_asks_for_disk_space(monkeypatch) -> None:
    manager = CheckpointManager(RUN, interval=1, keep_last=1)
    monkeypatch.setenv("TSTOOL_FAULT", "save:state:enospc")
    with pytest.raises(CheckpointError, match=r"No space left on device.*no earlier checkpoint is left: free disk"):
        manager.save(1, WEIGHTS, {"step": 1}, {}, best=False)


# ---- metrics.jsonl while a line is being appended ---------------------------------------------------

WHOLE = [
    {"step": 1, "loss_unweighted": 3.0, "tokens": 128, "tokens_per_s": 100.0, "elapsed_s": 1.0},
    {"step": 1, "split": "val", "loss_unweighted": 3.1, "bpb": 1.5},
    {"step": 2, "loss_unweighted": 2.5, "tokens": 256, "tokens_per_s": 100.0, "elapsed_s": 2.0},
]
TAILS = {
    "cut JSON": b'{"step": 3, "loss_unwei',
    "whole JSON without its newline": b'{"step": 3, "loss_unweighted": 2.0}',
    "cut inside a multi-byte character": b'{"step": 3, "note": "caf\xc3',
}


@pytest.mark.slow
@pytest.mark.parametrize("tail", TAILS)
def test_a_last_line_still_being_written_is_skipped_by_plot_and_compare(cli_json, tail: str) -> None:
    RUN.mkdir()
    METRICS.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in WHOLE) + TAILS[tail])
    assert read_metrics(METRICS) == WHOLE
    curves = load_curves(RUN)  # what compare and plot read
    assert [r["step"] for r in curves.train] == [1, 2] and [r["step"] for r in curves.val] == [1]
    assert training_time(curves.train) == 2.0
    plot_runs([RUN], Path("curves.png"))
    assert cli_json("plot", RUN, "--out", "cli.png")["runs"][0]["last_step"] == 2
