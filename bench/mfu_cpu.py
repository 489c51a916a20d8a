"""Model FLOP utilisation on CPU: achieved training FLOP/s over the matmul peak of this machine.

Achieved = tokens/s x `tstool.model.flops_per_token` (6N plus attention) for tstool's real training
step (weighted loss, fused AdamW); peak = `tstool.runtime.peak_matmul_flops` in the same dtype,
measured in turns with the steps. Value: MFU of the small preset in bf16.
"""

from __future__ import annotations

import functools
import statistics

import torch
from rich.console import Console

from bench import (
    Result,
    article_loss,
    batch,
    interleaved,
    model_config,
    table,
    threads_note,
    tokenizer,
    train_step,
    tstool_model,
)
from tstool.model import flops_per_token
from tstool.runtime import peak_matmul_flops

PRESET = "small"
DTYPES = ("bf16", "fp32")
GATED = "bf16"
BATCH = 4
REPEATS = 4
TARGET = 0.5


def record_peak(peaks: list[float], device: torch.device, dtype: str) -> None:
    peaks.append(peak_matmul_flops(device, dtype))


def run(console: Console) -> Result:
    tok, device = tokenizer(), torch.device("cpu")
    cfg = model_config(PRESET)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, BATCH, cfg.max_seq_len, device)
    per_token = flops_per_token(cfg, tok.vocab_size, cfg.max_seq_len)
    title = f"mfu_cpu: {PRESET} preset, {x.numel():,} tokens/step"
    report = table(title, "dtype", "tok/s", "model GFLOP/s", "peak GFLOP/s", "MFU")
    mfu = {}
    for dtype in DTYPES:
        peaks: list[float] = []
        step = train_step(model, model, x, y, dtype, article_loss(tok, device))
        peak_side = functools.partial(record_peak, peaks, device, dtype)
        seconds = interleaved({"step": step, "peak": peak_side}, REPEATS)
        achieved, peak = x.numel() / seconds["step"] * per_token, statistics.median(peaks)
        mfu[dtype] = achieved / peak
        report.add_row(
            dtype,
            f"{x.numel() / seconds['step']:,.0f}",
            f"{achieved / 1e9:.1f}",
            f"{peak / 1e9:.1f}",
            f"{mfu[dtype]:.3f}",
        )
    console.print(report)
    threads_note(console)
    return Result(f"mfu_cpu[{PRESET},{GATED}]", mfu[GATED], "MFU", TARGET, mfu[GATED] >= TARGET)
