"""tstool's own Muon (`tstool.training.optim.Muon`) against `torch.optim.Muon` in a whole training step.

tstool keeps its own optimizer code only while it is at least 5% faster per step than the library's.
Both sides run the `tiny` preset's step as `tstool train` runs it (its batch, article weight, AdamW for
the rest, gradient clipping), each on its own copy of the same model, in paired rounds: tstool's Muon,
which stacks the matrices of one shape and runs Newton-Schulz on each stack as one batch, against
`torch.optim.Muon(adjust_lr_fn="match_rms_adamw")` with the same learning rate, decay and momentum,
which loops over the matrices one by one. `optimizer.step` alone is timed too, on fixed gradients.

Value: torch's step time over tstool's.
Target: tstool's own Muon makes a whole step at least 5% faster (median ratio >= 1.05).
"""

from __future__ import annotations

import torch
from rich.console import Console

from bench import (
    Result,
    interleaved,
    preset_batch,
    preset_step,
    table,
    threads_note,
    tokenizer,
    tstool_model,
)
from tstool.config import resolve
from tstool.training.optim import Optimizers, build_optimizer

PRESET = "tiny"
# Rounds of 3 steps a side: single steps stray by about +-6% even at one thread, and a round's mean of
# three brings its ratio's quartiles clear of the 5% bound.
ROUNDS, CALLS = 30, 3
TARGET = 1.05
GUARDS = "tstool's own Muon makes a whole training step at least 5% faster than torch.optim.Muon (median >= 1.05)"
OWN, TORCH = "tstool Muon", "torch.optim.Muon"


def with_torch_muon(optimizers: Optimizers) -> Optimizers:
    """`build_optimizer`'s Muon + AdamW with torch's Muon in place of tstool's, on the same parameters
    and settings; match_rms_adamw scales updates as tstool's Muon does (0.2 sqrt(max(rows, cols)))."""
    own, adamw = optimizers.optimizers
    group = own.param_groups[0]
    muon = torch.optim.Muon(
        group["params"],
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        momentum=group["momentum"],
        adjust_lr_fn="match_rms_adamw",
    )
    return Optimizers(muon, adamw)


def run(console: Console, rounds: int = ROUNDS) -> Result:
    device, cfg, tok = torch.device("cpu"), resolve(PRESET), tokenizer()
    x, y = preset_batch(cfg, tok.vocab_size, device)
    models = {side: tstool_model(cfg.model, tok.vocab_size, device) for side in (OWN, TORCH)}
    optimizers = {side: build_optimizer(model, cfg.train, device) for side, model in models.items()}
    optimizers[TORCH] = with_torch_muon(optimizers[TORCH])
    steps = {side: preset_step(model, tok, cfg, x, y, optimizer=optimizers[side]) for side, model in models.items()}
    step_seconds = interleaved(steps, rounds, calls=CALLS)
    for model in models.values():  # fixed gradients for timing `optimizer.step` alone
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)
    optimizer_steps = {side: optimizer.step for side, optimizer in optimizers.items()}
    optimizer_seconds = interleaved(optimizer_steps, rounds, calls=CALLS)

    spread = step_seconds.ratio(TORCH, OWN)
    title = f"muon: {PRESET} preset, {x.numel():,} tokens/step, fp32, cpu, {rounds} rounds of {CALLS} calls a side"
    report = table(title, "timed", f"{OWN} ms", f"{TORCH} ms", "torch / tstool: median (quartiles)")
    for name, seconds in (("whole training step", step_seconds), ("optimizer.step alone", optimizer_seconds)):
        own_ms, torch_ms = seconds.median(OWN) * 1e3, seconds.median(TORCH) * 1e3
        report.add_row(name, f"{own_ms:.1f}", f"{torch_ms:.1f}", str(seconds.ratio(TORCH, OWN)))
    console.print(report)
    threads_note(console)
    unit = "step time ratio, torch.optim.Muon / tstool's Muon"
    return Result.of("muon", spread, unit, TARGET, spread.median >= TARGET, GUARDS)
