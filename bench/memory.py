"""Peak resident memory of a training step per preset, each in a fresh process, with tstool's loss.

A child process (`python -m bench.memory PRESET TOKENIZER`) builds the preset's model and a batch of
the preset's batch size and sequence length, and runs two steps as `tstool train` runs them (the
preset's loss, optimizer and dtype; the second step has optimizer state, and is timed), then reports
its peak resident set (see `peak_rss_mb`). Besides the presets with the shipped tokenizer, `tiny`
runs with GPT-2's 50,257-token vocabulary, where the logits dominate. The start-up figure (imports,
before the model) is reported beside it.

Value: the largest peak with the shipped tokenizer, MB. No target: tracked, so that a change in
memory shows from one run to the next.
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
    preset_batch,
    preset_step,
    seconds_per_call,
    table,
    threads_note,
    tstool_model,
)
from tstool.config import resolve
from tstool.data.tokenizer import load_tokenizer
from tstool.training.runtime import keep_freed_memory

CASES = {  # name: (preset, tokenizer; None is the shipped one)
    "debug": ("debug", None),
    "tiny": ("tiny", None),
    "small": ("small", None),
    "tiny, GPT-2 vocabulary": ("tiny", GPT2_TOKENIZER),
}
GUARDS = "nothing: tracked, for a reader to compare with the previous run"


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


def measure(preset: str, tokenizer: Path | None) -> dict[str, float]:
    """In this process: RSS after imports, then peak RSS over two training steps of `preset`."""
    keep_freed_memory()  # as every training process runs
    start = peak_rss_mb()
    tok, device, cfg = load_tokenizer(tokenizer), torch.device("cpu"), resolve(preset)
    model = tstool_model(cfg.model, tok.vocab_size, device)
    x, y = preset_batch(cfg, tok.vocab_size, device)
    step = preset_step(model, tok, cfg, x, y)
    step()
    seconds = seconds_per_call(step)
    return {
        "startup_mb": start,
        "peak_mb": peak_rss_mb(),
        "seconds": seconds,
        "tokens": x.numel(),
        "parameters": model.num_parameters(),
    }


def child(preset: str, tokenizer: Path | None) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.memory", preset, str(tokenizer or "")]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def run(console: Console, cases: dict[str, tuple[str, Path | None]] = CASES) -> Result:
    title = "memory: peak RSS of two training steps (fresh process per case)"
    columns = ("params", "tokens/step", "start-up MB", "peak MB", "step MB", "2nd step s")
    report = table(title, "case", *columns)
    peaks = []
    for name, (preset, tokenizer) in cases.items():
        found = child(preset, tokenizer)
        if tokenizer is None:  # comparable from run to run
            peaks.append(found["peak_mb"])
        report.add_row(
            name,
            f"{found['parameters']:,}",
            f"{found['tokens']:,}",
            f"{found['startup_mb']:,.0f}",
            f"{found['peak_mb']:,.0f}",
            f"{found['peak_mb'] - found['startup_mb']:,.0f}",
            f"{found['seconds']:.2f}",
        )
    console.print(report)
    threads_note(console)
    return Result("memory", max(peaks), "MB (peak RSS, largest preset)", None, None, GUARDS)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], Path(sys.argv[2]) if sys.argv[2] else None)))
