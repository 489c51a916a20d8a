"""Peak resident memory of a training step per preset, each in a fresh process.

A child process (`python -m bench.memory PRESET`) builds the preset's model, a batch of the preset's
batch size and sequence length, and runs two full steps (tstool loss, fused AdamW; the second has
optimizer state), then reports its peak resident set (see `peak_rss_mb`). The start-up figure
(imports, before the model) is reported beside it. There is no target: value is the largest peak, for tracking.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from bench import Result, article_loss, batch, table, threads_note, tokenizer, train_step, tstool_model
from tstool.config import resolve

PRESETS = ("debug", "tiny", "small")


def peak_rss_mb() -> float:
    """This process's peak resident set. Linux carries ru_maxrss over from the parent through fork and
    exec, so a child of a big benchmark process would report the parent's size; VmHWM belongs to the
    address space exec made fresh, so it is read where it exists."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS, the other /proc-less OS


def measure(preset: str) -> dict[str, float]:
    """In this process: RSS after imports, then peak RSS over two training steps of `preset`."""
    start = peak_rss_mb()
    tok, device, cfg = tokenizer(), torch.device("cpu"), resolve(preset)
    model = tstool_model(cfg.model, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, cfg.train.batch_size, cfg.model.max_seq_len, device)
    step = train_step(model, model, x, y, cfg.train.dtype, article_loss(tok, device))
    step()
    step()
    return {"startup_mb": start, "peak_mb": peak_rss_mb(), "tokens": x.numel(), "parameters": model.num_parameters()}


def run(console: Console) -> Result:
    title = "memory: peak RSS of a training step (fresh process per preset)"
    report = table(title, "preset", "params", "tokens/step", "start-up MB", "peak MB", "step MB")
    peaks = []
    for preset in PRESETS:
        child = subprocess.run(
            [sys.executable, "-m", "bench.memory", preset], check=True, capture_output=True, text=True
        )
        found = json.loads(child.stdout.strip().splitlines()[-1])
        peaks.append(found["peak_mb"])
        report.add_row(
            preset,
            f"{found['parameters']:,}",
            f"{found['tokens']:,}",
            f"{found['startup_mb']:.0f}",
            f"{found['peak_mb']:.0f}",
            f"{found['peak_mb'] - found['startup_mb']:.0f}",
        )
    console.print(report)
    threads_note(console)
    return Result("memory", max(peaks), "MB (peak RSS, largest preset)", None, True)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
