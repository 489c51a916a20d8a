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

import itertools
import tempfile
from collections.abc import Callable
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


def sides(
    ours: TinyLlama, theirs: nn.Module, tok: TextTokenizer, x: torch.Tensor, y: torch.Tensor, dtype: str, compiled: bool
) -> dict[str, Callable[[], None]]:
    """Each model's training step, both eager or both under torch.compile (`tstool train --compile`)."""
    ours_forward = torch.compile(ours) if compiled else ours
    theirs_forward = torch.compile(hf_forward(theirs)) if compiled else hf_forward(theirs)
    return {
        "tstool": train_step(ours, tstool_loss(ours, tok, weight=1.0, forward=ours_forward), x, y, dtype),
        "hf": train_step(theirs, hf_loss(theirs_forward), x, y, dtype),
    }


def add_row(report: Table, case: str, tokens: int, seconds: Timings, style: str) -> None:
    ours, theirs = tokens / seconds.median("tstool"), tokens / seconds.median("hf")
    spread = seconds.ratio("hf", "tstool")
    report.add_row(case, f"{tokens:,}", f"{ours:,.0f}", f"{theirs:,.0f}", f"{style}{spread}")


def compiled_note(
    steps: dict[str, Callable[[], None]], eager: Timings, rounds: int, device: torch.device
) -> tuple[Timings, str]:
    """The compiled steps' paired timings, and what compiling bought each side and took at the first step."""
    check_compile(device)  # the compiler's one-time start-up, so that neither side's first step pays it
    compiling = {side: seconds_per_call(step) for side, step in steps.items()}
    seconds = interleaved(steps, rounds)
    speedup = {side: eager.median(side) / seconds.median(side) for side in steps}
    return seconds, (
        f"compiling made a step {speedup['tstool']:.2f}x as fast for tstool, {speedup['hf']:.2f}x for HF "
        f"(medians); first compiled step {compiling['tstool']:.0f} s and {compiling['hf']:.0f} s"
    )


def run(
    console: Console,
    rounds: dict[str, int] = ROUNDS,
    compiled_rounds: int = COMPILED_ROUNDS,
    presets: tuple[str, ...] = PRESETS,
) -> Result:
    tok = tokenizer()
    columns = ("tokens", "tstool tok/s", "HF tok/s", "tstool/HF: median (quartiles)")
    report = table("train_vs_hf: training step, tstool's loss at weight 1 vs HF's plain CE", "case", *columns)
    tokens_per_s: dict[Case, float] = {}
    spreads: dict[Case, Spread] = {}  # of the targeted cases
    notes = []
    # An empty kernel cache, so that the first compiled step compiles, as on a first run.
    with tempfile.TemporaryDirectory() as tmp, fresh_kernel_cache():
        for device, preset in itertools.product(devices(), presets):
            cfg = model_config(preset)
            ours = tstool_model(cfg, tok.vocab_size, device)
            theirs = hf_twin(ours, tok, Path(tmp) / preset)
            for case in (Case(preset, dtype, device) for dtype in DTYPES):
                x, y = batch(tok.vocab_size, BATCH[preset, case.dtype], cfg.max_seq_len, device)
                seconds = interleaved(sides(ours, theirs, tok, x, y, case.dtype, compiled=False), rounds[case.dtype])
                tokens_per_s[case] = x.numel() / seconds.median("tstool")
                if targeted(case, tokens_per_s):
                    spreads[case] = seconds.ratio("hf", "tstool")
                    add_row(
                        report, str(case), x.numel(), seconds, "[green]" if spreads[case].high >= TARGET else "[red]"
                    )
                else:
                    add_row(report, f"{case} (shown)", x.numel(), seconds, "[dim]")
                if (device.type, case.dtype) == COMPILED:
                    steps = sides(ours, theirs, tok, x, y, case.dtype, compiled=True)
                    compiled, note = compiled_note(steps, seconds, compiled_rounds, device)
                    add_row(report, f"{case}, both compiled (shown)", x.numel(), compiled, "[dim]")
                    notes.append(f"{case}: {note}")
    console.print(report)
    for note in notes:
        console.print(note)
    threads_note(console)
    worst = min(spreads.values(), key=lambda spread: spread.median)
    ok = all(spread.high >= TARGET for spread in spreads.values())
    return Result.of("train_vs_hf", worst, "throughput ratio, tstool / HF (smallest median)", TARGET, ok, GUARDS)
