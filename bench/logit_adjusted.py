"""What the logit-adjusted loss (`tstool train --logit-adjusted`) adds to a training step.

Its extra work is the logit offset log w, which rides in the output head's matrix product as a bias
(`HeadLoss`; the CUDA graph adds it inside the graph): a fraction of a percent of a step, below what
whole steps resolve (single steps stray by about +-6% on a 2-core VM). So the head and loss alone,
forward and backward on the device's default path at article weight 5, are timed in many short paired
rounds, logit-adjusted against the default loss, and each round's difference is expressed as a share
of the default path's whole step, timed in the same run.

Value: (whole step + the round's extra head-and-loss time) / whole step, median over rounds, the worst
device. Target: at most 1.01, the logit-adjusted loss costs at most 1% of a step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.console import Console

from bench import (
    ARTICLE_WEIGHT,
    Result,
    ScalarHeadLoss,
    Spread,
    article_loss,
    batch,
    devices,
    interleaved,
    model_config,
    synchronize,
    table,
    threads_note,
    tokenizer,
    train_step,
    tstool_loss,
    tstool_model,
)

PRESET = "tiny"
DTYPE = "fp32"
BATCH = {"cpu": 4, "cuda": 16}  # as `loss_overhead`
# Head and loss alone: ROUNDS paired rounds of CALLS calls a side. A round's difference strays by about
# +-1.5% of a step on a 2-core VM; 100 rounds keep the median's own error near 0.2%.
ROUNDS = {"cpu": 100, "cuda": 400}
CALLS = 3
STEP_ROUNDS = 10  # whole default steps, for the denominator only
TARGET = 1.01
GUARDS = "the logit-adjusted loss costs at most 1% of a training step on the device's default path (median <= 1.01)"


def head_and_loss(
    loss: ScalarHeadLoss, hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor
) -> Callable[[], None]:
    """One forward and backward of the head and `loss` on leaves of their own, finished on the device."""
    leaves = hidden.detach().clone().requires_grad_(), head_weight.detach().clone().requires_grad_()

    def call() -> None:
        for leaf in leaves:
            leaf.grad = None
        loss(*leaves, targets).backward()
        synchronize(hidden.device)

    return call


def measure(device: torch.device, console: Console, rounds: int, batch_size: int) -> Spread:
    """Time the default and logit-adjusted head+loss on one device, print their table, return the share."""
    cfg = model_config(PRESET)
    tok = tokenizer()
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, batch_size, cfg.max_seq_len, device)
    step = interleaved({"step": train_step(model, tstool_loss(model, tok), x, y, DTYPE)}, STEP_ROUNDS)
    with torch.no_grad():
        hidden = model(x, head=False)
    head = model.lm_head.weight
    sides = {
        "default": head_and_loss(article_loss(tok, device), hidden, head, y),
        "logit-adjusted": head_and_loss(article_loss(tok, device, logit_adjusted=True), hidden, head, y),
    }
    seconds = interleaved(sides, rounds, calls=CALLS)
    step_seconds = step.median("step")
    extra = [(a - d) / step_seconds for a, d in zip(seconds["logit-adjusted"], seconds["default"], strict=True)]
    share = Spread.of([1 + e for e in extra])
    title = (
        f"logit_adjusted: {PRESET} preset {DTYPE}, {x.numel():,} tokens/step, {device.type}, w={ARTICLE_WEIGHT:g}, "
        f"{rounds} rounds of head+loss; whole step {step_seconds * 1e3:.1f} ms"
    )
    report = table(title, "head + loss (forward, backward)", "ms (median)", "(step + extra) / step: median (quartiles)")
    report.add_row("default", f"{seconds.median('default') * 1e3:.2f}", "")
    report.add_row("logit-adjusted", f"{seconds.median('logit-adjusted') * 1e3:.2f}", str(share))
    console.print(report)
    return share


def run(console: Console, rounds: dict[str, int] = ROUNDS, batch_size: dict[str, int] = BATCH) -> Result:
    spread = max(
        (measure(device, console, rounds[device.type], batch_size[device.type]) for device in devices()),
        key=lambda found: found.median,
    )
    threads_note(console)
    unit = "step time ratio, with / without the logit offset (worst device)"
    return Result.of("logit_adjusted", spread, unit, TARGET, spread.median <= TARGET, GUARDS)
