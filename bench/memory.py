"""Peak resident memory of a training step per preset, each in a fresh process, with tstool's loss
and, side by side, with the same loss on whole logits.

A child process (`python -m bench.memory PRESET TOKENIZER LOSS`) builds the preset's model, a batch of
the preset's batch size and sequence length, and runs two full steps (article loss, fused AdamW; the
second has optimizer state, and is timed), then reports its peak resident set (see `peak_rss_mb`). LOSS is `tstool`
(`ArticleLoss.from_hidden`, which never forms the whole logits on the CPU) or `whole` (the head's
logits, then `ArticleLoss`). Besides the presets with the shipped tokenizer, `tiny` runs with GPT-2's
50,257-token vocabulary, where the logits dominate (`small` at its batch of 32 would need about 7 GB
with whole logits). The start-up figure (imports, before the model) is reported beside it. There is
no target: value is the largest peak with tstool's loss and the shipped tokenizer, for tracking.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from bench import (
    GPT2_TOKENIZER,
    Result,
    batch,
    one_call_seconds,
    table,
    threads_note,
    train_step,
    tstool_loss,
    tstool_model,
)
from tstool.config import resolve
from tstool.data.tokenizer import load_tokenizer

CASES = {  # name: (preset, tokenizer; None is the shipped one)
    "debug": ("debug", None),
    "tiny": ("tiny", None),
    "small": ("small", None),
    "tiny, GPT-2 vocabulary": ("tiny", GPT2_TOKENIZER),
}
LOSSES = ("tstool", "whole")


def peak_rss_mb() -> float:
    """This process's peak resident set. Linux carries ru_maxrss over from the parent through fork and
    exec, so a child of a big benchmark process would report the parent's size; VmHWM belongs to the
    address space exec made fresh, so it is read where it exists."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS, the other /proc-less OS


def measure(preset: str, tokenizer: Path | None, loss: str) -> dict[str, float]:
    """In this process: RSS after imports, then peak RSS over two training steps of `preset`."""
    start = peak_rss_mb()
    tok, device, cfg = load_tokenizer(tokenizer), torch.device("cpu"), resolve(preset)
    model = tstool_model(cfg.model, tok.vocab_size, device)
    x, y = batch(tok.vocab_size, cfg.train.batch_size, cfg.model.max_seq_len, device)
    step = train_step(model, tstool_loss(model, tok, whole_logits=loss == "whole"), x, y, cfg.train.dtype)
    step()
    seconds = one_call_seconds(step)
    return {
        "startup_mb": start,
        "peak_mb": peak_rss_mb(),
        "seconds": seconds,
        "tokens": x.numel(),
        "parameters": model.num_parameters(),
    }


def child(preset: str, tokenizer: Path | None, loss: str) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.memory", preset, str(tokenizer or ""), loss]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def run(console: Console) -> Result:
    title = "memory: peak RSS of a training step (fresh process per case and loss)"
    whole = "whole logits: peak MB, 2nd step s"
    columns = ("params", "tokens/step", "start-up MB", "peak MB", "step MB", "2nd step s", whole)
    report = table(title, "case", *columns)
    peaks = []
    for name, (preset, tokenizer) in CASES.items():
        found = {loss: child(preset, tokenizer, loss) for loss in LOSSES}
        ours = found["tstool"]
        if tokenizer is None:  # comparable with earlier runs
            peaks.append(ours["peak_mb"])
        report.add_row(
            name,
            f"{ours['parameters']:,}",
            f"{ours['tokens']:,}",
            f"{ours['startup_mb']:,.0f}",
            f"{ours['peak_mb']:,.0f}",
            f"{ours['peak_mb'] - ours['startup_mb']:,.0f}",
            f"{ours['seconds']:.2f}",
            f"{found['whole']['peak_mb']:,.0f}, {found['whole']['seconds']:.2f}",
        )
    console.print(report)
    threads_note(console)
    return Result("memory", max(peaks), "MB (peak RSS, largest preset)", None, True)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], Path(sys.argv[2]) if sys.argv[2] else None, sys.argv[3])))
