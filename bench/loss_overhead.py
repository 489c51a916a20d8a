"""Cost of the article-weighted loss in a full training step, against plain F.cross_entropy.

Steps on the same model and batch, timed in turns, each loss taking the model's hidden states and
applying the tied head itself: plain mean CE on the head's logits; tstool's training loss
(`ArticleLoss.from_hidden`: weighted CE with article weight 5, plus its article/other breakdown), which
on the CPU never forms the whole logits (there also on the whole logits, to show what the loss itself
costs) and on CUDA replays the head and the loss, in Triton, from a CUDA graph (there also the Triton
kernels without a graph, the graph with ATen operations instead, and eager, to show what each buys);
and, for contrast, a naive version that builds the article mask with a Python loop over article IDs. Each
loss's ATen operator calls, with the head's, are counted too, the cost that matters where launches
bound a step. Value: tstool step time / plain step time.
"""

from __future__ import annotations

import torch
from rich.console import Console

from bench import (
    ARTICLE_WEIGHT,
    HeadLoss,
    LossFn,
    Result,
    article_loss,
    batch,
    devices,
    interleaved,
    model_config,
    on_hidden,
    on_logits,
    one_call_seconds,
    plain_loss,
    table,
    threads_note,
    tokenizer,
    train_step,
    tstool_model,
)
from tstool.data.articles import resolve_articles
from tstool.config import ArticleConfig

PRESET = "tiny"
DTYPE = "fp32"
# CPU: a small batch keeps the run short; CUDA: the tiny preset's own batch, as `make train` runs it.
BATCH = {"cpu": 4, "cuda": 16}
# Paired rounds. Single rounds' ratios stray by +-4% on a 2-core VM and +-5% on the H100: with 15
# (CPU) and 60 (CUDA) rounds the median ratio moved by +-1.5% from run to run (tenth session); these
# counts (~35 s on the CPU, ~20 s on CUDA) put it within about +-0.7%.
REPEATS = {"cpu": 40, "cuda": 240}
TARGET = 1.03


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


def aten_calls(loss: HeadLoss, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> int:
    """ATen operator calls, nested ones included, of one forward and backward of the head and `loss`
    alone: on a GPU whose step is bound by kernel launches rather than arithmetic, this count is what
    a loss costs."""
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        loss(hidden, weight, targets).backward()
    return sum(event.name.startswith("aten::") for event in profiler.events())


def measure(device: torch.device, console: Console) -> float:
    """Time the losses in full steps on one device, print their table, return tstool over plain."""
    tok = tokenizer()
    cfg = model_config(PRESET)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, BATCH[device.type], cfg.max_seq_len, device)
    ids = resolve_articles(tok, ArticleConfig(), require_single=True).ids
    plain, tstool = "plain F.cross_entropy", f"tstool weighted (w={ARTICLE_WEIGHT:g})"
    losses = {plain: on_logits(plain_loss), tstool: article_loss(tok, device)}
    if device.type == "cpu":  # what the loss costs on the same logits as plain CE's
        losses[f"{tstool}, on whole logits"] = article_loss(tok, device, whole_logits=True)
    if device.type == "cuda":  # the default replays the Triton kernels from a CUDA graph; each alone:
        losses[f"{tstool}, Triton, no graph"] = article_loss(tok, device, cuda_graphs=False)
        losses[f"{tstool}, graph of ATen ops"] = article_loss(tok, device, fused=False)
        losses[f"{tstool}, eager"] = article_loss(tok, device, cuda_graphs=False, fused=False)
    losses[f"naive loop over {len(ids)} IDs"] = on_logits(naive_loss(ids, ARTICLE_WEIGHT))
    steps = {name: train_step(model, on_hidden(model, loss), x, y, DTYPE) for name, loss in losses.items()}
    steps[plain]()  # the device's own start-up, so that the next step times only tstool's first
    first_step = one_call_seconds(steps[tstool])  # on CUDA, includes compiling the Triton kernels
    seconds = interleaved(steps, REPEATS[device.type])
    title = f"loss_overhead: {PRESET} preset {DTYPE}, {x.numel():,} tokens/step, {device.type}"
    report = table(
        title, "loss", "ms/step (median)", "vs plain (paired median)", "quartiles", "ATen calls (head+loss fwd+bwd)"
    )
    with torch.no_grad():
        hidden = model(x, head=False)
    for name, loss in losses.items():
        calls = aten_calls(loss, hidden, model.lm_head.weight, y)
        ratio, spread = f"{seconds.ratio(name, plain):.3f}", seconds.ratio_spread(name, plain)
        report.add_row(name, f"{seconds.median(name) * 1e3:.1f}", ratio, spread, f"{calls}")
    console.print(report)
    if device.type == "cuda":
        console.print(f"tstool's first step, including compiling the loss's Triton kernels: {first_step * 1e3:.0f} ms")
    return seconds.ratio(tstool, plain)


def run(console: Console) -> Result:
    ratio = max(measure(device, console) for device in devices())
    threads_note(console)
    return Result("loss_overhead", ratio, "step time ratio (max over devices)", TARGET, ratio <= TARGET)
