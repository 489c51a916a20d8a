"""Soak benchmark (not a CI test): train a preset for a long time, checkpointing every minute, and check that
the training process's memory does not grow.

    python -m bench.soak                 # the tiny preset for 30 minutes, a checkpoint every minute
    python -m bench.soak --minutes 2     # a quick check that the harness works

A short calibration run measures steps per second, so the checkpoint interval (in steps) comes out at about
--ckpt-every-s seconds. The soak run is `tstool train` in a subprocess; its resident memory (VmRSS from
/proc/PID/status) is sampled every --sample-s seconds. At the end it is stopped with SIGTERM, which must leave a
resumable checkpoint (exit 143). One JSON report goes to stdout, progress to stderr.

Exit codes: 0 memory stayed flat; 1 RSS grew by more than --max-growth after warm-up; 2 training failed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CALIBRATION_STEPS = 12
NEVER_ENDS = 10**9  # max_steps: the run is stopped by time, not by its schedule


def log(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


def tstool(args: list[str], log_path: Path) -> subprocess.Popen:
    """`python -m tstool ARGS --json`, its output in a log file (a pipe nobody reads could fill and block it)."""
    with open(log_path, "w", encoding="utf-8") as handle:
        return subprocess.Popen([sys.executable, "-m", "tstool", *args, "--json"], stdout=handle, stderr=handle)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a live process in MiB; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if kib is None else kib / 1024  # no VmRSS: a zombie


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def calibrate(config: str, folder: Path) -> float:
    """Training steps per second of `config` on this machine, timed between the first and last log lines."""
    run = folder / "calibrate"
    args = ["train", "--config", config, "--out-dir", str(run), "--max-steps", str(CALIBRATION_STEPS)]
    proc = tstool([*args, "--set", "train.log_interval=4"], folder / "calibrate.log")
    if proc.wait() != 0:
        log(f"calibration failed; see {folder / 'calibrate.log'}")
        raise SystemExit(2)
    train = [r for r in records(run) if "loss" in r and "split" not in r]
    first, last = train[0], train[-1]
    return (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])


def growth_after_warmup(samples: list[tuple[float, float]], warmup_s: float) -> tuple[float, float, float]:
    """(baseline, end, growth): medians of the first and of the last three samples after warm-up, and the rise.

    Medians, because RSS swings by tens of MiB within one step as activations come and go.
    """
    settled = [mb for t, mb in samples if t >= warmup_s]
    baseline, end = statistics.median(settled[:3]), statistics.median(settled[-3:])
    return baseline, end, (end - baseline) / baseline


def warmup(args: argparse.Namespace) -> float:
    """Seconds not judged: as given, or 20% of the run but at least until just past the first checkpoint."""
    return args.warmup_s if args.warmup_s is not None else max(0.2 * args.minutes * 60, 1.25 * args.ckpt_every_s)


def soak(args: argparse.Namespace, folder: Path) -> int:
    if args.ckpt_steps:
        ckpt_steps, steps_per_s = args.ckpt_steps, None
    else:
        steps_per_s = calibrate(args.config, folder)
        ckpt_steps = max(1, round(steps_per_s * args.ckpt_every_s))
        log(f"calibrated: {steps_per_s:.2f} steps/s, so a checkpoint every {ckpt_steps} steps")
    duration, warmup_s = args.minutes * 60, warmup(args)
    run = folder / "run"
    train_args = ["train", "--config", args.config, "--out-dir", str(run), "--max-steps", str(NEVER_ENDS)]
    for key in ("ckpt_interval", "eval_interval"):  # an evaluation and a checkpoint every minute
        train_args += ["--set", f"train.{key}={ckpt_steps}"]
    proc = tstool(train_args, folder / "train.log")
    started = time.monotonic()
    samples: list[tuple[float, float]] = []
    for tick in range(1, int(duration // args.sample_s) + 1):  # on a fixed grid, so sleeps do not drift
        at = tick * args.sample_s
        time.sleep(max(0.0, started + at - time.monotonic()))
        mb = rss_mb(proc.pid)
        if mb is None or proc.poll() is not None:
            log(f"training ended early (exit {proc.wait()}); see {folder / 'train.log'}")
            return 2
        samples.append((at, round(mb, 1)))
        log(f"{at / 60:5.1f} min  RSS {mb:7.1f} MiB")
    time.sleep(max(0.0, started + duration - time.monotonic()))
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=300)
    if code != 143:
        log(f"SIGTERM should leave a checkpoint and exit 143, not {code}; see {folder / 'train.log'}")
        return 2
    final_step = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text(encoding="utf-8"))["step"]
    baseline, end, growth = growth_after_warmup(samples, warmup_s)
    ok = growth <= args.max_growth
    report = {
        "config": args.config,
        "minutes": args.minutes,
        "steps_per_s": steps_per_s,
        "ckpt_steps": ckpt_steps,
        "final_step": final_step,
        "checkpoints": math.ceil(final_step / ckpt_steps),  # every interval, plus the one SIGTERM leaves
        "warmup_s": warmup_s,
        "rss_mib": {
            "first": samples[0][1],
            "after_warmup": baseline,
            "last": samples[-1][1],
            "end": end,
            "max": max(mb for _, mb in samples),
        },
        "growth_after_warmup": round(growth, 4),
        "max_growth": args.max_growth,
        "ok": ok,
        "samples": samples,
    }
    print(json.dumps(report, indent=2))
    log(f"RSS {baseline:.1f} -> {end:.1f} MiB after warm-up ({growth:+.1%}): {'ok' if ok else 'GROWING'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="How long to train (default 30).")
    parser.add_argument("--config", default="tiny", help="Preset or YAML file to train (default tiny).")
    parser.add_argument("--ckpt-every-s", type=float, default=60, help="Seconds between checkpoints (default 60).")
    parser.add_argument("--ckpt-steps", type=int, help="Steps between checkpoints; skips the calibration run.")
    parser.add_argument("--sample-s", type=float, default=10, help="Seconds between RSS samples (default 10).")
    parser.add_argument(
        "--warmup-s",
        type=float,
        help="Seconds of warm-up not judged (default: 20%% of the run, at least the first checkpoint).",
    )
    parser.add_argument(
        "--max-growth", type=float, default=0.10, help="Allowed RSS growth after warm-up (default 0.10)."
    )
    parser.add_argument("--keep", type=Path, help="Keep the run folder and logs here instead of a temporary folder.")
    args = parser.parse_args()
    if warmup(args) > args.minutes * 60 - 2 * args.sample_s:
        parser.error("the run must outlast the warm-up by at least two samples: raise --minutes or lower --warmup-s")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="tstool-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return soak(args, folder)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
