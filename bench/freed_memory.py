"""What `tstool.training.runtime.keep_freed_memory` buys a `tiny` training step on this machine's CPU.

The setting changes glibc's allocator for a whole process and cannot be undone cleanly, so each side
runs in a fresh process of its own, the two in paired rounds: the `tiny` preset's step as `tstool
train` runs it (batch 8, its loss, Muon and AdamW), timed over STEPS steps after WARMUP. Without the
setting, every block over 32 MB (the logits and their gradient) is faulted in afresh each step.

Value: step time as glibc leaves it over step time with freed memory kept, median over rounds.
Target: keeping freed memory, which tstool does in every training process, makes a step at least 5%
faster (median ratio >= 1.05).
"""

from __future__ import annotations

import subprocess
import sys

import torch
from rich.console import Console

from bench import (
    Result,
    interleaved,
    paired_rounds,
    preset_batch,
    preset_step,
    table,
    threads_note,
    tokenizer,
    tstool_model,
)
from tstool.config import resolve
from tstool.training.runtime import keep_freed_memory

PRESET = "tiny"
WARMUP, STEPS, ROUNDS = 2, 10, 8
TARGET = 1.05
GUARDS = "keeping freed memory makes a tiny training step at least 5% faster (median >= 1.05)"
SIDES = {"glibc defaults": "plain", "freed memory kept": "keep"}


def step_seconds(mode: str, steps: int = STEPS) -> float:
    """Median seconds of one `PRESET` training step in this process, after `keep_freed_memory` if mode is keep."""
    if mode == "keep" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() is not available here (not glibc)")
    tok, device, cfg = tokenizer(), torch.device("cpu"), resolve(PRESET)
    model = tstool_model(cfg.model, tok.vocab_size, device)
    step = preset_step(model, tok, cfg, *preset_batch(cfg, tok.vocab_size, device))
    return interleaved({"step": step}, steps, warmup=WARMUP).median("step")


def in_fresh_process(mode: str, steps: int) -> float:
    command = [sys.executable, "-m", "bench.freed_memory", mode, str(steps)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])


def run(console: Console, rounds: int = ROUNDS, steps: int = STEPS) -> Result:
    measures = {name: lambda mode=mode: in_fresh_process(mode, steps) for name, mode in SIDES.items()}
    seconds = paired_rounds(measures, rounds)
    plain, kept = SIDES
    spread = seconds.ratio(plain, kept)
    tokens = resolve(PRESET).train.batch_size * resolve(PRESET).model.max_seq_len
    report = table(f"freed_memory: {PRESET} preset, {tokens:,} tokens/step, cpu", "allocator", "ms/step", "each round")
    for name, values in seconds.items():
        report.add_row(name, f"{seconds.median(name) * 1e3:.1f}", " ".join(f"{v * 1e3:.0f}" for v in values))
    report.add_row("defaults / kept: median (quartiles)", str(spread), "")
    console.print(report)
    console.print(f"{rounds} paired rounds, each side in a fresh process; median of {steps} steps per process.")
    threads_note(console)
    unit = "step time ratio, glibc defaults / freed memory kept"
    return Result.of("freed_memory", spread, unit, TARGET, spread.median >= TARGET, GUARDS)


if __name__ == "__main__":
    print(step_seconds(sys.argv[1], int(sys.argv[2])))
