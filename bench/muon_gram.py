"""Muon's Newton-Schulz iteration in its Gram form against the direct form, on the `tiny` preset's matrices.

Every step Muon orthogonalises the update of each hidden weight matrix, stacked by shape. Both forms
run the same quintic iteration and agree up to rounding (tests/test_optim.py); the Gram form does it
on the small (m, m) Gram matrices and touches the (m, n) update only at the start and the end, which
saves most of the work for the wide fused matrices. Timed in turns on what one `tiny` step
orthogonalises; a whole `tiny` training step (Muon, the article loss) is timed in the same run to show
what the saving is worth. CPU only: on CUDA the iteration runs in bf16, which keeps the direct form.
Value: direct-form time / Gram-form time, all shapes together.
"""

from __future__ import annotations

import torch
from rich.console import Console

from bench import (
    Result,
    batch,
    interleaved,
    table,
    threads_note,
    tokenizer,
    train_step,
    tstool_loss,
    tstool_model,
)
from tstool.config import resolve
from tstool.model.llama import param_groups
from tstool.training.optim import by_shape, orthogonalise

PRESET = "tiny"
REPEATS = 20
TARGET = 1.0


def update_stacks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Random stand-ins for one step's Muon updates, stacked per matrix shape as `Muon.step` stacks them,
    named "count × rows × cols"."""
    decay, _ = param_groups(model, 0.0)
    gen = torch.Generator().manual_seed(0)
    stacks = (torch.randn(len(params), *shape, generator=gen) for shape, params in by_shape(decay["params"]).items())
    return {" × ".join(map(str, stack.shape)): stack for stack in stacks}


def run(console: Console) -> Result:
    tok, device, cfg = tokenizer(), torch.device("cpu"), resolve(PRESET)
    model = tstool_model(cfg.model, tok.vocab_size, device)
    stacks = update_stacks(model)
    sides = {}
    for name, stack in stacks.items():
        sides[f"{name} direct"] = lambda s=stack: orthogonalise(s, torch.float32, gram=False)
        sides[f"{name} Gram"] = lambda s=stack: orthogonalise(s, torch.float32)
    seconds = interleaved(sides, REPEATS, warmup=2)
    x, y = batch(tok.vocab_size, cfg.train.batch_size, cfg.model.max_seq_len, device)
    step = train_step(model, tstool_loss(model, tok), x, y, "fp32", cfg.train)
    step_s = interleaved({"step": step}, 5, warmup=2).median("step")

    title = f"muon_gram: Newton-Schulz on the {PRESET} preset's Muon updates (stacked per shape), fp32, cpu"
    report = table(title, "matrices", "direct ms", "Gram form ms", "direct/Gram (paired median)")
    direct_total = gram_total = 0.0
    for name in stacks:
        direct, gram = seconds.median(f"{name} direct"), seconds.median(f"{name} Gram")
        direct_total, gram_total = direct_total + direct, gram_total + gram
        paired = seconds.ratio(f"{name} direct", f"{name} Gram")
        report.add_row(name, f"{direct * 1e3:.2f}", f"{gram * 1e3:.2f}", f"{paired:.3f}")
    ratio = direct_total / gram_total
    report.add_row("all (one step)", f"{direct_total * 1e3:.2f}", f"{gram_total * 1e3:.2f}", f"{ratio:.3f}")
    console.print(report)
    saved = direct_total - gram_total
    console.print(
        f"A whole {PRESET} training step (Muon, article loss, batch {cfg.train.batch_size}) took "
        f"{step_s * 1e3:.0f} ms in this run: the Gram form saves {saved * 1e3:.1f} ms "
        f"({saved / (step_s + saved):.1%} of a direct-form step)."
    )
    threads_note(console)
    return Result("muon_gram", ratio, "Newton-Schulz time ratio (direct / Gram form)", TARGET, ratio >= TARGET)
