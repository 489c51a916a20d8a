"""What `tstool.runtime.keep_freed_memory` buys a `tiny` training step on this machine's CPU.

The setting changes glibc's allocator for a whole process and cannot be undone cleanly, so each side
runs in a fresh process of its own, in turns, ROUNDS times: the `tiny` preset's batch, the
article-weighted loss and fused AdamW, timed over STEPS steps after WARMUP. Without the setting,
every block over 32 MB (the logits and their gradient) is faulted in afresh each step.
Value: step time as glibc leaves it / step time with freed memory kept.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

import torch
from rich.console import Console

from bench import (
    Result,
    batch,
    interleaved,
    model_config,
    table,
    threads_note,
    tokenizer,
    train_step,
    tstool_loss,
    tstool_model,
)
from tstool.training.runtime import keep_freed_memory

PRESET = "tiny"
BATCH = 8
WARMUP, STEPS, ROUNDS = 3, 15, 3
TARGET = 1.0
SIDES = {"glibc defaults": "plain", "freed memory kept": "keep"}


def step_seconds(mode: str) -> float:
    """Median seconds of one `tiny` training step in this process, after `keep_freed_memory` if mode is keep."""
    if mode == "keep" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() is not available here (not glibc)")
    tok, device = tokenizer(), torch.device("cpu")
    cfg = model_config(PRESET)
    x, y = batch(tok.vocab_size, BATCH, cfg.max_seq_len, device)
    model = tstool_model(cfg, tok.vocab_size, device)
    step = train_step(model, tstool_loss(model, tok), x, y, "fp32")
    return interleaved({"step": step}, STEPS, warmup=WARMUP).median("step")


def in_fresh_process(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "bench.freed_memory", mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout.split()[-1])


def run(console: Console) -> Result:
    seconds: dict[str, list[float]] = {name: [] for name in SIDES}
    for _ in range(ROUNDS):
        for name, mode in SIDES.items():
            seconds[name].append(in_fresh_process(mode))
    plain, kept = (statistics.median(seconds[name]) for name in SIDES)
    title = f"freed_memory: {PRESET} preset fp32, {BATCH * model_config(PRESET).max_seq_len:,} tokens/step, cpu"
    report = table(title, "allocator", "ms/step (median of rounds)", "each round")
    for name, values in seconds.items():
        report.add_row(name, f"{statistics.median(values) * 1e3:.1f}", " ".join(f"{v * 1e3:.0f}" for v in values))
    console.print(report)
    console.print(f"{ROUNDS} rounds, each side in a fresh process, in turns; {STEPS} timed steps per process.")
    threads_note(console)
    ratio = plain / kept
    return Result("freed_memory", ratio, "step time ratio (glibc defaults / kept)", TARGET, ratio >= TARGET)


if __name__ == "__main__":
    print(step_seconds(sys.argv[1]))
