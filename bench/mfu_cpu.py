"""Model FLOP utilisation on CPU: achieved training FLOP/s over the matmul peak of this machine.

Achieved = tokens/s x `tstool.model.flops_per_token` (6N plus attention) for tstool's real training
step (weighted loss, fused AdamW). Two peaks, both measured here in the step's dtype:
`tstool.runtime.peak_matmul_flops` (one 1024² a @ b, what the training table's MFU divides by), and
the best rate over the model's linear-layer shapes and 1024³ in all three layouts training uses
(forward, input gradient, weight gradient). Where bf16 has no hardware support the a @ b layout is
several times slower than x @ W.T, so the first is no peak at all (MFU above 1); the value uses the
second. Value: MFU of the small preset in bf16 against the best-layout peak.
"""

from __future__ import annotations

import time

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
from tstool.config import ModelConfig
from tstool.model.llama import flops_per_token
from tstool.training.runtime import AUTOCAST_DTYPES, peak_matmul_flops

PRESET = "small"
DTYPES = ("fp32", "bf16")
GATED = "bf16"
BATCH = 1  # sequences of max_seq_len: bf16 steps take seconds on a CPU without bf16 hardware
REPEATS = 3
TARGET = 0.5


def gemm_shapes(cfg: ModelConfig, vocab_size: int, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the model's linear layers at `tokens` rows (qkv, output, gate/up, down, head), and 1024³."""
    qkv = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
    d, f = cfg.d_model, cfg.ffn_hidden
    linears = [(tokens, d, qkv), (tokens, d, d), (tokens, d, 2 * f), (tokens, f, d), (tokens, d, vocab_size)]
    return [*linears, (1024, 1024, 1024)]


def linear_rates(m: int, k: int, n: int, dtype: torch.dtype) -> list[float]:
    """FLOP/s of the three matmuls a linear layer x (m, k), W (n, k) costs in training: forward
    x @ W.T, input gradient g @ W, weight gradient g.T @ x. Their speeds differ by up to 8x in bf16
    on CPUs without bf16 hardware, so a peak taken from one layout alone can be far from the peak."""
    generator = torch.Generator().manual_seed(0)
    x, w, g = (torch.randn(*shape, generator=generator).to(dtype) for shape in ((m, k), (n, k), (m, n)))
    rates = []
    for product in (lambda: x @ w.T, lambda: g @ w, lambda: g.T @ x):
        product()  # warm-up
        start = time.perf_counter()
        product()
        rates.append(2 * m * k * n / (time.perf_counter() - start))
    return rates


def run(console: Console) -> Result:
    tok, device = tokenizer(), torch.device("cpu")
    cfg = model_config(PRESET)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, BATCH, cfg.max_seq_len, device)
    per_token = flops_per_token(cfg, tok.vocab_size, cfg.max_seq_len)
    title = f"mfu_cpu: {PRESET} preset, {x.numel():,} tokens/step"
    columns = ("dtype", "tok/s", "model GFLOP/s", "1024² peak", "MFU vs 1024²", "best-layout peak", "MFU")
    report = table(title, *columns)
    mfu = {}
    for dtype in DTYPES:
        square = peak_matmul_flops(device, dtype, repeats=2)
        step = train_step(model, tstool_loss(model, tok), x, y, dtype)
        seconds = interleaved({"step": step}, REPEATS).median("step")
        torch_dtype = AUTOCAST_DTYPES.get(dtype, torch.float32)
        shapes = gemm_shapes(cfg, tok.vocab_size, x.numel())
        best = max(rate for shape in shapes for rate in linear_rates(*shape, torch_dtype))
        achieved = x.numel() / seconds * per_token
        mfu[dtype] = achieved / best
        report.add_row(
            dtype,
            f"{x.numel() / seconds:,.0f}",
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
