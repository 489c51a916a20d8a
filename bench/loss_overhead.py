"""What tstool's loss costs in a whole training step, against plain F.cross_entropy on the same logits.

Steps on the same model and batch, timed in paired rounds, each loss taking the model's hidden states
and applying the tied head: plain mean CE on the head's logits; tstool's training loss at article
weight 5 (weighted CE with its article/other breakdown) as `tstool train` picks it for the device
(`tstool.fast.head_loss`: on the CPU the reference `HeadLoss`, on CUDA the head and loss replayed from
a CUDA graph, with the reference beside it); and, for contrast, a naive loss that builds the article
mask with a Python loop over article IDs. Each loss's ATen operator calls, with the head's, are
counted too: where kernel launches bound a step (a small model on a GPU), that count is its cost.
The logit-adjusted loss is priced by `bench logit_adjusted`.

Value: tstool's step time over plain's on the device's default path, the worst device.
Target: the article breakdown costs at most 15% of a step (median ratio <= 1.15).
"""

from __future__ import annotations

import torch
from rich.console import Console

from bench import (
    ARTICLE_WEIGHT,
    LossFn,
    Result,
    ScalarHeadLoss,
    Spread,
    article_loss,
    batch,
    devices,
    interleaved,
    model_config,
    on_hidden,
    on_logits,
    plain_loss,
    table,
    threads_note,
    tokenizer,
    train_step,
    tstool_model,
)
from tstool.config import ArticleConfig
from tstool.data.articles import resolve_articles

PRESET = "tiny"
DTYPE = "fp32"
# CPU: a small batch keeps the run short; CUDA: 4,096 tokens, as the H100 figures were measured.
BATCH = {"cpu": 4, "cuda": 16}
# Paired rounds of CALLS steps a side: single steps stray by about +-6% on a 2-core VM and +-5% on an
# H100; these counts keep the median within about +-1% from run to run.
ROUNDS = {"cpu": 40, "cuda": 240}
CALLS = 2
TARGET = 1.15
GUARDS = "the article breakdown costs at most 15% of a step on the device's default path (median <= 1.15)"
PLAIN = "plain F.cross_entropy"
DEFAULT = f"tstool (w={ARTICLE_WEIGHT:g}), default path"
REFERENCE = f"tstool (w={ARTICLE_WEIGHT:g}), reference (fast_paths off)"


def naive_loss(article_ids: list[int], weight: float) -> LossFn:
    """The loop-and-mask way: one comparison pass over the targets per article ID."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        is_article = torch.zeros_like(targets, dtype=torch.bool)
        for article_id in article_ids:
            is_article |= targets == article_id
        weights = torch.where(is_article, weight, 1.0).flatten()
        return (weights * ce).sum() / weights.sum()

    return loss


def aten_calls(loss: ScalarHeadLoss, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> int:
    """ATen operator calls, nested ones included, of one forward and backward of the head and `loss` alone."""
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        loss(hidden, weight, targets).backward()
    return sum(event.name.startswith("aten::") for event in profiler.events())


def losses(device: torch.device) -> dict[str, ScalarHeadLoss]:
    """The losses timed on `device`: plain CE first, then tstool's default path, then the rest."""
    tok = tokenizer()
    ids = resolve_articles(tok, ArticleConfig(), require_single=True).ids
    found = {
        PLAIN: on_logits(plain_loss),
        DEFAULT: article_loss(tok, device),
    }
    if device.type == "cuda":  # the default is the CUDA graph: the reference beside it shows what it buys
        found[REFERENCE] = article_loss(tok, device, fast_paths=False)
    found[f"naive loop over {len(ids)} IDs"] = on_logits(naive_loss(ids, ARTICLE_WEIGHT))
    return found


def measure(device: torch.device, console: Console, rounds: int, batch_size: int, preset: str) -> Spread:
    """Time the losses in whole steps on one device, print their table, return tstool's default over plain."""
    cfg = model_config(preset)
    vocab_size = tokenizer().vocab_size
    model = tstool_model(cfg, vocab_size, device)
    x, y = batch(vocab_size, batch_size, cfg.max_seq_len, device)
    timed = losses(device)
    steps = {name: train_step(model, on_hidden(model, loss), x, y, DTYPE) for name, loss in timed.items()}
    seconds = interleaved(steps, rounds, calls=CALLS)
    title = f"loss_overhead: {preset} preset {DTYPE}, {x.numel():,} tokens/step, {device.type}, {rounds} rounds"
    report = table(title, "loss", "ms/step (median)", "vs plain: median (quartiles)", "ATen calls (head+loss)")
    with torch.no_grad():
        hidden = model(x, head=False)
    for name, loss in timed.items():
        calls = aten_calls(loss, hidden, model.lm_head.weight, y)
        report.add_row(name, f"{seconds.median(name) * 1e3:.1f}", str(seconds.ratio(name, PLAIN)), f"{calls}")
    console.print(report)
    return seconds.ratio(DEFAULT, PLAIN)


def run(
    console: Console, rounds: dict[str, int] = ROUNDS, batch_size: dict[str, int] = BATCH, preset: str = PRESET
) -> Result:
    spread = max(
        (measure(device, console, rounds[device.type], batch_size[device.type], preset) for device in devices()),
        key=lambda found: found.median,
    )
    threads_note(console)
    unit = "step time ratio, tstool / plain CE (worst device)"
    return Result.of("loss_overhead", spread, unit, TARGET, spread.median <= TARGET, GUARDS)
