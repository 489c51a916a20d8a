"""Model FLOP utilisation on CPU: achieved training FLOP/s over the matmul peak of this machine.

Achieved = tokens/s x `flops_per_token` (6N plus attention) of tstool's real training step (article
loss, fused AdamW) on the small preset. The peak is the best rate, in the step's dtype, over the
model's linear-layer shapes and 1024³ in the three layouts training multiplies in (forward, input
gradient, weight gradient): on CPUs without bf16 hardware the layouts' speeds differ by up to 8x, so
one layout alone can be far from the peak. That best product is then timed in paired rounds with the
step, so each round's MFU divides rates taken under the same load. The MFU `tstool train` reports
(against one 1024² a @ b, `peak_matmul_flops`) is shown beside it.

Value: MFU in fp32, median over rounds. bf16 is shown: it is fast only on CPUs with bf16 hardware.
Target: a training step keeps the CPU's matrix units at least 40% busy in fp32 (median MFU >= 0.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from rich.console import Console

from bench import (
    Result,
    Spread,
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
TARGETED = "fp32"
BATCH = 1  # sequences of max_seq_len: bf16 steps take seconds on a CPU without bf16 hardware
ROUNDS = {"fp32": 15, "bf16": 5}
PEAK_CALLS = 4  # products per round on the peak's side, so that its time is not a few milliseconds
TARGET = 0.4
GUARDS = "a training step keeps the CPU's matrix units at least 40% busy in fp32 (median MFU >= 0.4)"

Product = tuple[int, Callable[[], torch.Tensor]]  # FLOPs, and the call that multiplies


def gemm_shapes(cfg: ModelConfig, vocab_size: int, tokens: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the model's linear layers at `tokens` rows (qkv, output, gate/up, down, head), and 1024³."""
    qkv = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
    d, f = cfg.d_model, cfg.ffn_hidden
    linears = [(tokens, d, qkv), (tokens, d, d), (tokens, d, 2 * f), (tokens, f, d), (tokens, d, vocab_size)]
    return [*linears, (1024, 1024, 1024)]


def layouts(m: int, k: int, n: int, dtype: torch.dtype) -> list[Product]:
    """The three matmuls a linear layer x (m, k), W (n, k) costs in training: forward x @ W.T, input
    gradient g @ W, weight gradient g.T @ x."""
    generator = torch.Generator().manual_seed(0)
    x, w, g = (torch.randn(*shape, generator=generator).to(dtype) for shape in ((m, k), (n, k), (m, n)))
    flops = 2 * m * k * n
    return [(flops, lambda: x @ w.T), (flops, lambda: g @ w), (flops, lambda: g.T @ x)]


def rate(product: Product) -> float:
    flops, call = product
    call()  # warm-up
    start = time.perf_counter()
    call()
    return flops / (time.perf_counter() - start)


def best_product(shapes: list[tuple[int, int, int]], dtype: torch.dtype) -> Product:
    """The fastest of the shapes' products in all three layouts: the peak's side of each round."""
    return max((product for shape in shapes for product in layouts(*shape, dtype)), key=rate)


def measure(dtype: str, rounds: int) -> tuple[Spread, float, float]:
    """MFU of the small preset's step in `dtype` (median and quartiles over rounds), its tokens/s, and
    the MFU against `peak_matmul_flops` that `tstool train` reports."""
    tok, device = tokenizer(), torch.device("cpu")
    cfg = model_config(PRESET)
    model = tstool_model(cfg, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, BATCH, cfg.max_seq_len, device)
    shapes = gemm_shapes(cfg, tok.vocab_size, x.numel())
    flops, product = best_product(shapes, AUTOCAST_DTYPES.get(dtype, torch.float32))
    sides = {"step": train_step(model, tstool_loss(model, tok), x, y, dtype), "peak": product}
    seconds = interleaved(sides, rounds, calls=PEAK_CALLS)
    step_flops = x.numel() * flops_per_token(cfg, tok.vocab_size, cfg.max_seq_len)
    mfu = Spread.of([ratio * step_flops / flops for ratio in seconds.ratios("peak", "step")])
    tokens_per_s = x.numel() / seconds.median("step")
    reported = step_flops / seconds.median("step") / peak_matmul_flops(device, dtype)
    return mfu, tokens_per_s, reported


def run(console: Console, rounds: dict[str, int] = ROUNDS) -> Result:
    report = table(
        f"mfu_cpu: {PRESET} preset, {BATCH * model_config(PRESET).max_seq_len:,} tokens/step, cpu",
        "dtype",
        "tok/s",
        "MFU: median (quartiles)",
        "MFU as tstool train reports it",
    )
    found = {}
    for dtype in DTYPES:
        found[dtype], tokens_per_s, reported = measure(dtype, rounds[dtype])
        shown = "" if dtype == TARGETED else " (shown)"
        report.add_row(dtype + shown, f"{tokens_per_s:,.0f}", str(found[dtype]), f"{reported:.3f}")
    console.print(report)
    console.print("Peaks measured in the same process, dtype and rounds as the steps.")
    threads_note(console)
    mfu = found[TARGETED]
    return Result.of(f"mfu_cpu[{PRESET},{TARGETED}]", mfu, "MFU", TARGET, mfu.median >= TARGET, GUARDS)
