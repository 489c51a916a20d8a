"""Every fast path behind `train.fast_paths`, switched on and off in a whole training step.

A fast path stays in tstool only while it makes a whole training step at least 5% faster at a preset's
default settings on the device it targets (`tstool.fast`). For each one: the `tiny` preset's step as
`tstool train` runs it (its batch, dtype, article weight, Muon and AdamW, gradient clipping), with
`tstool.fast.head_loss(..., enabled)` on and off, in paired rounds. A fast path whose device this
machine lacks is reported as absent: nothing is measured, and nothing fails.

Value: step time with fast paths off over on, the smallest over the fast paths measured.
Target: each fast path makes the step at least 5% faster (median ratio >= 1.05).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console

from bench import (
    Result,
    Spread,
    devices,
    interleaved,
    preset_batch,
    preset_step,
    table,
    threads_note,
    tokenizer,
    tstool_model,
)
from tstool.config import resolve

PRESET = "tiny"
ROUNDS = 120  # single rounds of a host-bound GPU step stray by about +-5%
TARGET = 1.05
GUARDS = "each fast path makes a whole training step at least 5% faster on its device (median >= 1.05)"
UNIT = "step time ratio, fast paths off / on (smallest)"


@dataclass(frozen=True)
class FastPath:
    name: str
    device: str  # the device type it targets


FAST_PATHS = (FastPath("CUDA graph of the head and loss (tstool.fast.cuda_graph_loss)", "cuda"),)


def measure(path: FastPath, rounds: int) -> Spread:
    """Off/on step time of the `PRESET` preset's training step on `path`'s device."""
    device, cfg, tok = torch.device(path.device), resolve(PRESET), tokenizer()
    model = tstool_model(cfg.model, tok.vocab_size, device)
    x, y = preset_batch(cfg, tok.vocab_size, device)
    steps = {switch: preset_step(model, tok, cfg, x, y, fast_paths=switch == "on") for switch in ("off", "on")}
    return interleaved(steps, rounds).ratio("off", "on")


def run(console: Console, rounds: int = ROUNDS) -> Result:
    present = {device.type for device in devices()}
    title = f"fast_paths: a whole {PRESET} training step (preset defaults), train.fast_paths off / on"
    report = table(title, "fast path", "device", "off / on: median (quartiles)", f"≥ {TARGET}")
    measured = []
    for path in FAST_PATHS:
        if path.device not in present:
            report.add_row(path.name, path.device, f"{path.device} absent: not measured", "skipped")
            continue
        spread = measure(path, rounds)
        measured.append(spread)
        report.add_row(path.name, path.device, str(spread), "yes" if spread.median >= TARGET else "[red]no")
    console.print(report)
    threads_note(console)
    if not measured:
        return Result("fast_paths", None, UNIT, TARGET, None, GUARDS)
    worst = min(measured, key=lambda spread: spread.median)
    return Result.of("fast_paths", worst, UNIT, TARGET, worst.median >= TARGET, GUARDS)
