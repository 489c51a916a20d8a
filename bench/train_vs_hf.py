"""Training-step throughput of tstool's model against transformers' LlamaForCausalLM of the same shape.

Both sides get the same weights, batch, dtype (autocast), threads and optimizer (tstool's fused
AdamW, gradient clipping), and each computes its loss as it trains: HF plain CE on its logits, tstool
its article loss at weight 1 (the same CE, plus the article breakdown) on the path `tstool train`
picks for the device. Their steps are timed in paired rounds, tiny and small presets, fp32 and bf16.

bf16 on a CPU is shown, and targeted only where the CPU has bf16 hardware and tstool's bf16 step is
faster than its fp32 step there: elsewhere nobody would train in it. On CPU in fp32 both models are
also timed under torch.compile (`tstool train --compile`), in rounds of their own: what compiling
buys each side, and how long the first, compiling step takes; shown, not targeted.

Value: the smallest median tstool/HF throughput ratio over the targeted cases.
Target: tstool is no slower than HF beyond the rounds' spread (every targeted case's upper quartile >= 1.0).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from bench import (
    Result,
    Spread,
    Timings,
    batch,
    cpu_has_bf16,
    devices,
    hf_forward,
    hf_loss,
    hf_twin,
    interleaved,
    model_config,
    seconds_per_call,
    table,
    threads_note,
    tokenizer,
    train_step,
    tstool_loss,
    tstool_model,
)
from tstool.data.tokenizer import TextTokenizer
from tstool.model.llama import TinyLlama
from tstool.training.runtime import check_compile, fresh_kernel_cache

PRESETS = ("tiny", "small")
DTYPES = ("fp32", "bf16")  # fp32 first: whether bf16 is targeted depends on it
# Sequences of max_seq_len per step; the batch is small so that all cases take a few minutes on 2 cores.
BATCH = {("tiny", "fp32"): 4, ("small", "fp32"): 2, ("tiny", "bf16"): 2, ("small", "bf16"): 1}
# Paired rounds: single rounds' ratios stray by about +-5% on a 2-core VM.
ROUNDS = {"fp32": 60, "bf16": 20}
COMPILED_ROUNDS = 20
TARGET = 1.0
GUARDS = "tstool's training step is no slower than HF's beyond the rounds' spread (upper quartile >= 1.0)"
COMPILED = ("cpu", "fp32")  # (device type, dtype) also timed with both models compiled


@dataclass(frozen=True)
class Case:
    preset: str
    dtype: str
    device: torch.device

    def __str__(self) -> str:
        return f"{self.preset} {self.dtype} {self.device.type}"


def targeted(case: Case, tokens_per_s: dict[Case, float]) -> bool:
    """Whether `case` counts towards the target: a CPU's bf16 only with hardware that makes it faster."""
    if case.device.type != "cpu" or case.dtype != "bf16":
        return True
    fp32 = Case(case.preset, "fp32", case.device)
    return cpu_has_bf16() and tokens_per_s[case] > tokens_per_s[fp32]


def compiled_row(
    ours: TinyLlama, theirs: nn.Module, tok: TextTokenizer, x: torch.Tensor, y: torch.Tensor, dtype: str, rounds: int
) -> tuple[Timings, dict[str, float]]:
    """Both models under torch.compile: their paired timings and each side's first (compiling) step."""
    check_compile(x.device)  # the compiler's one-time start-up, so that neither side pays it
    steps = {
        "tstool": train_step(ours, tstool_loss(ours, tok, weight=1.0, forward=torch.compile(ours)), x, y, dtype),
        "hf": train_step(theirs, hf_loss(torch.compile(hf_forward(theirs))), x, y, dtype),
    }
    compiling = {side: seconds_per_call(step) for side, step in steps.items()}
    return interleaved(steps, rounds), compiling


def row(report: Table, case: str, tokens: int, seconds: Timings, spread: Spread, style: str) -> None:
    ours, theirs = tokens / seconds.median("tstool"), tokens / seconds.median("hf")
    report.add_row(case, f"{tokens:,}", f"{ours:,.0f}", f"{theirs:,.0f}", f"{style}{spread}")


def run(
    console: Console,
    rounds: dict[str, int] = ROUNDS,
    compiled_rounds: int = COMPILED_ROUNDS,
    presets: tuple[str, ...] = PRESETS,
) -> Result:
    tok = tokenizer()
    report = table(
        "train_vs_hf: training step (forward, backward, clipping, AdamW), tstool's loss at weight 1 vs HF's CE",
        "case",
        "tokens",
        "tstool tok/s",
        "HF tok/s",
        "tstool/HF: median (quartiles)",
    )
    tokens_per_s: dict[Case, float] = {}
    spreads: dict[Case, Spread] = {}
    notes = []
    # An empty kernel cache, so that the first compiled step compiles, as on a first run.
    with tempfile.TemporaryDirectory() as tmp, fresh_kernel_cache():
        for device in devices():
            for preset in presets:
                cfg = model_config(preset)
                ours = tstool_model(cfg, tok.vocab_size, device)
                theirs = hf_twin(ours, tok, Path(tmp) / preset)
                for dtype in DTYPES:
                    case = Case(preset, dtype, device)
                    x, y = batch(tok.vocab_size, BATCH[preset, dtype], cfg.max_seq_len, device)
                    steps = {
                        "tstool": train_step(ours, tstool_loss(ours, tok, weight=1.0), x, y, dtype),
                        "hf": train_step(theirs, hf_loss(hf_forward(theirs)), x, y, dtype),
                    }
                    seconds = interleaved(steps, rounds[dtype])
                    tokens_per_s[case] = x.numel() / seconds.median("tstool")
                    spreads[case] = seconds.ratio("hf", "tstool")
                    aimed = targeted(case, tokens_per_s)
                    style = ("[green]" if spreads[case].high >= TARGET else "[red]") if aimed else "[dim]"
                    row(report, str(case) + ("" if aimed else " (shown)"), x.numel(), seconds, spreads[case], style)
                    if not aimed:
                        del spreads[case]
                    if (device.type, dtype) == COMPILED:
                        compiled, compiling = compiled_row(ours, theirs, tok, x, y, dtype, compiled_rounds)
                        spread = compiled.ratio("hf", "tstool")
                        row(report, f"{case}, both compiled (shown)", x.numel(), compiled, spread, "[dim]")
                        speedup = {side: seconds.median(side) / compiled.median(side) for side in compiled}
                        notes.append(
                            f"{case}: compiling made a step {speedup['tstool']:.2f}x as fast for tstool, "
                            f"{speedup['hf']:.2f}x for HF (medians); first compiled step "
                            f"{compiling['tstool']:.0f} s and {compiling['hf']:.0f} s"
                        )
    console.print(report)
    for note in notes:
        console.print(note)
    threads_note(console)
    worst = min(spreads.values(), key=lambda spread: spread.median)
    ok = all(spread.high >= TARGET for spread in spreads.values())
    return Result.of("train_vs_hf", worst, "throughput ratio, tstool / HF (smallest median)", TARGET, ok, GUARDS)
