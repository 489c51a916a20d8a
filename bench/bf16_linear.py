"""tstool's `Linear` against `nn.Linear` under CPU bf16 autocast: forward and backward of one layer.

On CPUs without bf16 matrix units, oneDNN's bf16 product for the input gradient, grad @ W with both
operands row-major, is several times slower than the same product with W transposed in memory.
`tstool.model.Linear` makes that copy in its backward; everything else is `F.linear`'s. Timed in
turns on the `small` preset's projection shapes with one sequence (256 tokens) of input.
Value: nn.Linear time / tstool Linear time, all shapes together.
"""

from __future__ import annotations

import torch
from rich.console import Console
from torch import nn

from bench import Result, interleaved, model_config, table, threads_note
from tstool.model.llama import Linear

PRESET = "small"
TOKENS = 256
REPEATS = 5
TARGET = 1.0


def fwd_bwd(layer: nn.Linear, x: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()


def run(console: Console) -> Result:
    cfg = model_config(PRESET)
    shapes = {
        "q/k/v": (cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim),
        "o": (cfg.n_heads * cfg.head_dim, cfg.d_model),
        "gate/up": (cfg.d_model, 2 * cfg.ffn_hidden),
        "down": (cfg.ffn_hidden, cfg.d_model),
    }
    sides = {}
    for name, (fan_in, fan_out) in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(TOKENS, fan_in, requires_grad=True)
        theirs, ours = nn.Linear(fan_in, fan_out, bias=False), Linear(fan_in, fan_out)
        sides[f"{name} nn"] = lambda layer=theirs, x=x: fwd_bwd(layer, x)
        sides[f"{name} tstool"] = lambda layer=ours, x=x: fwd_bwd(layer, x)
    seconds = interleaved(sides, REPEATS)
    title = f"bf16_linear: forward + backward under CPU bf16 autocast, {PRESET} preset shapes, {TOKENS} tokens"
    report = table(title, "projection (in → out)", "nn.Linear ms", "tstool Linear ms", "nn/tstool (paired median)")
    theirs_total = ours_total = 0.0
    for name, (fan_in, fan_out) in shapes.items():
        theirs, ours = seconds.median(f"{name} nn"), seconds.median(f"{name} tstool")
        theirs_total, ours_total = theirs_total + theirs, ours_total + ours
        paired = seconds.ratio(f"{name} nn", f"{name} tstool")
        report.add_row(f"{name} ({fan_in} → {fan_out})", f"{theirs * 1e3:.1f}", f"{ours * 1e3:.1f}", f"{paired:.2f}")
    ratio = theirs_total / ours_total
    report.add_row("all", f"{theirs_total * 1e3:.1f}", f"{ours_total * 1e3:.1f}", f"{ratio:.2f}")
    console.print(report)
    threads_note(console)
    return Result("bf16_linear", ratio, "time ratio (nn.Linear / tstool Linear)", TARGET, ratio >= TARGET)
