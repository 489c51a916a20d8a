"""Training: label alignment, exact resume, gradient accumulation, crash-safe checkpoints, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tstool.config import resolve
from tstool.data.batches import BlockSampler, gather_blocks, split_block
from tstool.data.corpus import load_corpus
from tstool.data.packing import load_tokens
from tstool.data.tokenizer import load_tokenizer
from tstool.runs import checkpoint as ckpt
from tstool.runs.metrics_log import read_metrics
from tstool.training import loss
from tstool.training.trainer import RunOptions, train

DEBUG = ["--config", "debug", "--no-live"]


def train_records(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "split" not in r and "loss" in r}


def test_targets_are_inputs_shifted_exactly_once(tmp_path: Path) -> None:
    cfg = resolve("debug")
    stream = load_tokens(cfg.data, "train", load_tokenizer())
    sampler = BlockSampler(len(stream.tokens), 32, batch_size=8, seed=3)
    ids = sampler.next_ids()
    x, y = split_block(gather_blocks(stream.tokens, ids, 32))
    assert torch.equal(y[:, :-1], x[:, 1:])
    for row, block in enumerate(ids):
        start = int(block) * 32
        assert x[row].tolist() == stream.tokens[start : start + 32].tolist()
        assert y[row].tolist() == stream.tokens[start + 1 : start + 33].tolist()


@pytest.mark.slow
def test_token_cache_is_reused_and_keyed_by_tokenizer(gpt2_dir: Path) -> None:
    cfg = resolve("debug")
    first = load_tokens(cfg.data, "val", load_tokenizer())
    again = load_tokens(cfg.data, "val", load_tokenizer())
    other = load_tokens(cfg.data, "val", load_tokenizer(gpt2_dir))
    assert again.path == first.path
    assert other.path != first.path
    eot = load_tokenizer().eot_id
    assert int((np.asarray(first.tokens) == eot).sum()) == len(load_corpus(cfg.data, "val").stories)


def test_sampler_order_is_seeded_and_resumable() -> None:
    a = BlockSampler(10_000, 32, 4, seed=1)
    seen = [a.next_ids().tolist() for _ in range(200)]  # crosses epoch boundaries
    b = BlockSampler(10_000, 32, 4, seed=1)
    for _ in range(120):
        b.next_ids()
    c = BlockSampler(10_000, 32, 4, seed=1)
    c.load_state(b.state)
    assert [c.next_ids().tolist() for _ in range(80)] == seen[120:]


def test_ranks_take_disjoint_slices_of_each_global_batch() -> None:
    ranks = [BlockSampler(10_000, 32, 4, seed=1, rank=r, world=2) for r in range(2)]
    single = BlockSampler(10_000, 32, 8, seed=1)
    for _ in range(5):
        assert np.concatenate([r.next_ids() for r in ranks]).tolist() == single.next_ids().tolist()


@pytest.mark.slow
# Muon's update has AdamW's steady-state RMS (0.2 lr), smaller than Adam's first steps: it takes a higher lr.
@pytest.mark.parametrize(("optimizer", "lr"), [("adamw", 3e-3), ("muon", 1e-2)])
def test_short_real_run_learns_and_writes_a_self_describing_run(cli_json, optimizer: str, lr: float) -> None:
    sets = ["--set", "train.log_interval=5", "--set", f"train.optimizer={optimizer}", "--set", f"train.lr={lr}"]
    out = cli_json("train", *DEBUG, "--max-steps", 40, "--out-dir", "run", *sets)
    records = train_records(Path("run"))
    assert records[40]["loss_unweighted"] < records[5]["loss_unweighted"] - 1.0
    val = [r for r in read_metrics(Path("run/metrics.jsonl")) if r.get("split") == "val"]
    assert val and all(r["bpb"] > 0 for r in val)
    assert out["step"] == 40
    latest = Path("run/checkpoints/latest")
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["tokenizer_sha256"] == load_tokenizer().sha256
    assert meta["article_ids"] == sorted(meta["article_ids"]) and meta["article_ids"]
    assert {p.name for p in latest.iterdir()} == {"model.safetensors", "state.pt", "meta.json"}
    assert (Path("run") / "config.yaml").is_file() and (Path("run") / "tokenizer.json").is_file()
    state = torch.load(latest / "state.pt", weights_only=True)
    assert state["step"] == 40


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_reproduces_the_uninterrupted_run_exactly(cli_json, optimizer: str) -> None:
    common = [*DEBUG, "--max-steps", 16, "--set", "train.log_interval=1", "--set", "train.eval_interval=4"]
    common += ["--set", f"train.optimizer={optimizer}"]
    common += ["--set", "train.ckpt_interval=100", "--set", "model.dropout=0.1", "--article-weight", 3]
    cli_json("train", *common, "--out-dir", "straight")
    cli_json("train", *common, "--out-dir", "split", "--stop-after", 7)
    assert max(train_records(Path("split"))) == 7
    cli_json("train", *common, "--out-dir", "split", "--resume", "auto")
    straight, split = train_records(Path("straight")), train_records(Path("split"))
    assert sorted(split) == list(range(1, 17))  # no step line twice
    for step in range(1, 17):
        for key in ("loss", "loss_unweighted", "article_loss", "grad_norm"):
            assert split[step][key] == straight[step][key], (step, key)
    steps = [r["step"] for r in read_metrics(Path("split/metrics.jsonl")) if "loss" in r and "split" not in r]
    assert len(steps) == len(set(steps))


@pytest.mark.slow
def test_gradient_accumulation_equals_a_larger_batch(tmp_path: Path) -> None:
    losses = {}
    for name, batch, accum in (("big", 8, 1), ("accum", 2, 4)):
        cfg = resolve(
            "debug",
            {
                "train.batch_size": batch,
                "train.grad_accum": accum,
                "train.max_steps": 4,
                "train.log_interval": 1,
                "train.article_weight": 4.0,
            },
        )
        train(cfg, RunOptions(out_dir=tmp_path / name))
        losses[name] = [r["loss"] for r in train_records(tmp_path / name).values()]
    assert losses["big"] == pytest.approx(losses["accum"], rel=1e-5)


@pytest.mark.slow
def test_refuses_to_resume_with_another_tokenizer(cli, cli_json, user_error, gpt2_dir: Path) -> None:
    cli_json("train", *DEBUG, "--max-steps", 4, "--out-dir", "run")
    result = cli("train", *DEBUG, "--max-steps", 8, "--out-dir", "run", "--resume", "auto", "--tokenizer", gpt2_dir)
    user_error(result, "tokenizer")


@pytest.mark.slow
def test_refuses_to_resume_with_another_model_shape(cli, cli_json, user_error) -> None:
    cli_json("train", *DEBUG, "--max-steps", 4, "--out-dir", "run")
    result = cli("train", *DEBUG, "--max-steps", 8, "--out-dir", "run", "--resume", "auto", "--set", "model.d_model=64")
    user_error(result, "model.d_model")


@pytest.mark.slow
def test_refuses_an_out_dir_holding_another_run(cli, cli_json, user_error) -> None:
    cli_json("train", *DEBUG, "--max-steps", 4, "--out-dir", "run")
    before = (Path("run/checkpoints/latest/model.safetensors")).read_bytes()
    user_error(cli("train", *DEBUG, "--max-steps", 4, "--out-dir", "run", "--set", "train.lr=0.01"), "--overwrite")
    user_error(cli("train", *DEBUG, "--max-steps", 4, "--out-dir", "run"), "--resume auto")
    assert Path("run/checkpoints/latest/model.safetensors").read_bytes() == before
    cli_json("train", *DEBUG, "--max-steps", 4, "--out-dir", "run", "--overwrite", "--set", "train.lr=0.01")


def run_subprocess(
    args: list[str], env: dict[str, str] | None = None, timeout: int = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tstool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
@pytest.mark.parametrize("point", ["save:state", "save:before-link"])
def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(point: str, cli_json) -> None:
    cli_json("train", *DEBUG, "--max-steps", 30, "--out-dir", "run", "--stop-after", 10)
    crashed = run_subprocess(
        ["train", *DEBUG, "--max-steps", 30, "--out-dir", "run", "--resume", "auto"], env={"TSTOOL_FAULT": point}
    )
    assert crashed.returncode == 17, crashed.stderr
    loaded = ckpt.load_checkpoint(Path("run"), with_state=True)
    assert loaded.meta["step"] == 10 and loaded.state["step"] == 10
    out = cli_json("train", *DEBUG, "--max-steps", 30, "--out-dir", "run", "--resume", "auto")
    assert out["step"] == 30
    assert not list(Path("run/checkpoints").glob(".*tmp"))


@pytest.mark.slow
def test_a_full_disk_while_saving_is_a_clean_error(cli, cli_json, monkeypatch) -> None:
    cli_json("train", *DEBUG, "--max-steps", 30, "--out-dir", "run", "--stop-after", 10)
    monkeypatch.setenv("TSTOOL_FAULT", "save:state:enospc")
    result = cli("train", *DEBUG, "--max-steps", 30, "--out-dir", "run", "--resume", "auto")
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "No space left" in last and "step-0000010 is intact" in last
    assert ckpt.load_checkpoint(Path("run"), with_state=True).meta["step"] == 10


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint() -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tstool",
            "train",
            *DEBUG,
            "--max-steps",
            "100000",
            "--out-dir",
            "run",
            "--set",
            "train.log_interval=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120  # a cold start on a busy 2-core machine
    while not Path("run/metrics.jsonl").is_file() or not Path("run/metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "--resume auto" in stderr
    state = ckpt.load_checkpoint(Path("run"), with_state=True).state
    assert state["step"] >= 1


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync_and_learn(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--standalone",  # a free port, not a fixed one another job may hold
            "-m",
            "tstool",
            "train",
            *DEBUG,
            "--max-steps",
            "30",
            "--out-dir",
            "ddp",
            "--json",
            "--set",
            "train.log_interval=5",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["ddp_params_in_sync"] is True
    assert summary["world"] == 2
    records = train_records(Path("ddp"))
    assert records[30]["loss_unweighted"] < records[5]["loss_unweighted"]
    assert records[5]["tokens"] == 5 * 2 * 4 * 32  # both ranks' batches count


@pytest.mark.slow
def test_a_warning_in_the_first_step_is_a_run_event_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the loss cannot be captured in a CUDA graph: it warns once, at its first call, and runs on."""
    message = "capturing the loss in a CUDA graph failed (no capture here); it runs without one"
    real_call, calls = loss.HeadLoss.__call__, []

    def warn_once(self: loss.HeadLoss, *args: torch.Tensor) -> loss.LossParts:
        if not calls:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        calls.append(1)
        return real_call(self, *args)

    monkeypatch.setattr(loss.HeadLoss, "__call__", warn_once)
    events: list[dict] = []
    cfg = resolve("debug", {"train.max_steps": 3, "train.log_interval": 1})
    summary = train(cfg, RunOptions(out_dir=tmp_path / "run"), events.append)
    assert [e["message"] for e in events if e["event"] == "warning"] == [message]
    assert summary.step == 3
    assert [r["step"] for r in train_records(tmp_path / "run").values()] == [1, 2, 3]


@pytest.mark.slow
def test_compile_without_a_cpu_compiler_is_a_one_line_error_before_the_run_folder() -> None:
    result = run_subprocess(
        ["train", *DEBUG, "--compile", "--max-steps", 2, "--out-dir", "run"], env={"CXX": "/nonexistent/g++"}
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --compile cannot build kernels on cpu"), result.stderr
    assert "/nonexistent/g++" in lines[0] and "without --compile" in lines[0]
    assert not Path("run").exists()


@pytest.mark.slow
@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))), reason="inductor needs a C++ compiler")
def test_compiled_training_follows_the_eager_losses(tmp_path: Path) -> None:
    losses = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        cfg = resolve("debug", {"train.compile": compiled, "train.max_steps": 4, "train.log_interval": 1})
        train(cfg, RunOptions(out_dir=tmp_path / name))
        losses[name] = [r["loss"] for r in train_records(tmp_path / name).values()]
    # Inductor fuses and reorders float sums, so the runs agree closely but not bit for bit.
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert len(losses["compiled"]) == 4
