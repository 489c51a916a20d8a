"""Time of a training step with the head inside the loss against the same loss on whole logits.

`tstool train` on the CPU applies the output head inside the loss (`ArticleLoss.from_hidden`), a block
of rows at a time, instead of forming the logits and then the loss. Both ways run the same article
loss (weight 5) on the `tiny` preset's model at its batch of 8, with the shipped 4,096-token vocabulary
(in fp32, and in bf16 autocast) and with GPT-2's 50,257 tokens, in paired rounds. Whole logits are
formed as the model's head forms them (`tstool.model.linear`). Value: whole-logits time / head-inside
time with GPT-2's vocabulary, where the logits are large. With the shipped one the two are expected to
be at parity: those ratios are shown, not targeted. Peak memory is `memory`'s job.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from bench import (
    GPT2_TOKENIZER,
    Result,
    batch,
    interleaved,
    model_config,
    table,
    threads_note,
    train_step,
    tstool_loss,
    tstool_model,
)
from tstool.data.tokenizer import load_tokenizer

PRESET, BATCH = "tiny", 8
# (vocabulary, tokenizer, dtype, paired rounds); a bf16 step is several times slower on CPUs without bf16 units
CASES = (("shipped", None, "fp32", 20), ("shipped", None, "bf16", 4), ("GPT-2", GPT2_TOKENIZER, "fp32", 6))
SIDES = ("head inside the loss", "whole logits")
TARGET = 1.0


def measure(tokenizer: Path | None, dtype: str, rounds: int) -> tuple[dict[str, float], float, str, int]:
    """Median step seconds per side, the paired whole/inside ratio and its quartiles, and the vocabulary."""
    tok, device, cfg = load_tokenizer(tokenizer), torch.device("cpu"), model_config(PRESET)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, BATCH, cfg.max_seq_len, device)
    losses = {side: tstool_loss(model, tok, whole_logits=side == SIDES[1]) for side in SIDES}
    steps = {side: train_step(model, loss, x, y, dtype) for side, loss in losses.items()}
    seconds = interleaved(steps, rounds)
    medians = {side: seconds.median(side) for side in SIDES}
    return medians, seconds.ratio(*reversed(SIDES)), seconds.ratio_spread(*reversed(SIDES)), tok.vocab_size


def run(console: Console) -> Result:
    title = f"head_in_loss: {PRESET} preset, batch {BATCH}, article loss (w=5), cpu"
    columns = (*(f"{side} ms" for side in SIDES), "whole / inside (paired)", "quartiles")
    report = table(title, "vocabulary, dtype", "rounds", *columns)
    ratios = {}
    for name, tokenizer, dtype, rounds in CASES:
        medians, ratio, spread, vocab = measure(tokenizer, dtype, rounds)
        ratios[name, dtype] = ratio
        report.add_row(
            f"{name} ({vocab:,} tokens), {dtype}",
            f"{rounds}",
            *(f"{medians[side] * 1e3:,.0f}" for side in SIDES),
            f"{ratio:.3f}",
            spread,
        )
    console.print(report)
    threads_note(console)
    value = ratios["GPT-2", "fp32"]
    unit = "step time ratio, whole logits / head inside (GPT-2 vocabulary)"
    return Result("head_in_loss", value, unit, TARGET, value >= TARGET)
