"""Model FLOP utilisation on CPU: achieved training FLOP/s over the matmul peak of this machine.

Achieved = tokens/s x `tstool.model.flops_per_token` (6N plus attention) for tstool's real training
step (weighted loss, fused AdamW). Two peaks, both measured here in the step's dtype:
`tstool.runtime.peak_matmul_flops` (one 1024² matmul, what the training table's MFU divides by), and
the best rate over that and the model's own GEMM shapes. On a CPU whose bf16 matmul is slow for
large squares the first is no peak at all (MFU above 1), so the value uses the second.
Value: MFU of the small preset in bf16 against the best-shape peak.
"""

from __future__ import annotations

import time

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
from tstool.config import ModelConfig
from tstool.model import flops_per_token
from tstool.runtime import AUTOCAST_DTYPES, peak_matmul_flops

PRESET = "small"
DTYPES = ("fp32", "bf16")
GATED = "bf16"
BATCH = 1  # sequences of max_seq_len: bf16 steps take seconds on a CPU without bf16 hardware
REPEATS = 3
TARGET = 0.5


def gemm_shapes(cfg: ModelConfig, vocab_size: int, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the model's forward matmuls at `tokens` rows: qkv, output, gate/up, down, head."""
    qkv = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
    d, f = cfg.d_model, cfg.ffn_hidden
    return [(tokens, d, qkv), (tokens, d, d), (tokens, d, 2 * f), (tokens, f, d), (tokens, d, vocab_size)]


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of one (m, k) @ (k, n) matmul after a warm-up call."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator).to(dtype), torch.randn(k, n, generator=generator).to(dtype)
    a @ b
    start = time.perf_counter()
    a @ b
    return 2 * m * k * n / (time.perf_counter() - start)


def run(console: Console) -> Result:
    tok, device = tokenizer(), torch.device("cpu")
    cfg = model_config(PRESET)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, BATCH, cfg.max_seq_len, device)
    per_token = flops_per_token(cfg, tok.vocab_size, cfg.max_seq_len)
    title = f"mfu_cpu: {PRESET} preset, {x.numel():,} tokens/step"
    columns = ("dtype", "tok/s", "model GFLOP/s", "1024² peak", "MFU vs 1024²", "best-shape peak", "MFU")
    report = table(title, *columns)
    mfu = {}
    for dtype in DTYPES:
        square = peak_matmul_flops(device, dtype, repeats=2)
        seconds = interleaved({"step": train_step(model, model, x, y, dtype, article_loss(tok, device))}, REPEATS)
        rates = [
            matmul_rate(*shape, AUTOCAST_DTYPES.get(dtype, torch.float32))
            for shape in gemm_shapes(cfg, tok.vocab_size, x.numel())
        ]
        best = max([square, *rates])
        achieved = x.numel() / seconds["step"] * per_token
        mfu[dtype] = achieved / best
        report.add_row(
            dtype,
            f"{x.numel() / seconds['step']:,.0f}",
            f"{achieved / 1e9:.2f}",
            f"{square / 1e9:.2f}",
            f"{achieved / square:.2f}",
            f"{best / 1e9:.2f}",
            f"{mfu[dtype]:.3f}",
        )
    console.print(report)
    console.print("GFLOP/s throughout; peaks measured in the same process and dtype as the steps.")
    threads_note(console)
    return Result(f"mfu_cpu[{PRESET},{GATED}]", mfu[GATED], "MFU", TARGET, mfu[GATED] >= TARGET)
