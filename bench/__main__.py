"""`python -m bench [NAME ...]`: run the named benchmarks (default: all), each ending with its JSON line."""

from __future__ import annotations

import importlib
import sys
import time

from rich.console import Console

from tstool.training.runtime import keep_freed_memory

BENCHMARKS = (
    "train_vs_hf",
    "mfu_cpu",
    "loss_overhead",
    "logit_adjusted",
    "fast_paths",
    "muon",
    "freed_memory",
    "data",
    "data_scale",
    "generate_vs_hf",
    "eval_vs_hf",
    "memory",
)


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"Error: unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    console = Console(width=120)  # tables stay whole when piped to a file
    keep_freed_memory()  # as `tstool train` runs
    for name in names or BENCHMARKS:
        start = time.perf_counter()
        result = importlib.import_module(f"bench.{name}").run(console)
        console.print(f"[dim]{name}: {time.perf_counter() - start:.0f} s[/dim]")
        result.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
