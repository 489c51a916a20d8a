"""Data at full scale: tokenise and cache corpora of 50 to 400 MB, each in a fresh process, then start warm.

The corpora are the bundled stories repeated to each size, written at run time as one text file
(<|endoftext|> between stories) in a temporary folder: nothing large is committed. For each size a fresh
process runs `load_tokens` for train and val as `tstool train --data FILE` does (a counting pass for the
held-out share, then each split streamed through the tokenizer into its cache file); a second fresh
process then loads both splits again with the cache warm. The processes are bare interpreters with
tstool's data modules (no torch, no bench package), so their peak resident set (VmHWM) is the
tokenising process's own.

Reported per size: tokens per second of wall time, tokens per CPU-second (per core: steady under other
load on the machine), peak RSS, and the warm start (the whole process, imports included). Over sizes:
the log-log slopes of cold time and peak memory against size. Targets: time slope <= 1.1, peak at the
largest size <= 1.2x the smallest, warm start <= 5 s at the largest, >= 1M tokens/s. Value: tokens/s at
the largest size. `python -m bench.data_scale [MB ...]` runs other sizes (the test runs small ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench import Result, cpu_name, table
from tstool.data.corpus import read_bundled
from tstool.data.stats import available_cores
from tstool.data.tokenizer import EOT

SIZES_MB = (50, 100, 200, 400)
TARGET_TOKENS_PER_S = 1e6
TARGET_TIME_SLOPE = 1.1
TARGET_MEMORY_GROWTH = 1.2
TARGET_WARM_S = 5.0
GUARDS = (
    "tokenising at >= 1M tokens/s, in time linear in the corpus (log-log slope <= 1.1) and flat memory "
    "(peak <= 1.2x from the smallest corpus to the largest), and a warm start within 5 s"
)
# Runs in a bare interpreter: argv is the corpus file and the cache folder; prints one JSON line.
CHILD = """
import json, resource, sys, time
from pathlib import Path

def rss_mb(field):
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS

from tstool.config import DataConfig
from tstool.data.packing import load_tokens
from tstool.data.tokenizer import load_tokenizer

startup_mb = rss_mb("VmRSS")
cfg = DataConfig(files=[sys.argv[1]], cache_dir=sys.argv[2])
wall, cpu = time.perf_counter(), time.process_time()
tokens = sum(len(load_tokens(cfg, split, load_tokenizer()).tokens) for split in ("train", "val"))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"tokens": tokens, "seconds": wall, "cpu_seconds": cpu, "startup_mb": startup_mb,
                  "peak_mb": rss_mb("VmHWM")}))
"""


def bundled_text() -> bytes:
    stories = read_bundled("train") + read_bundled("val")
    return "".join(f"{story}\n{EOT}\n" for story in stories).encode("utf-8")


def write_corpus(path: Path, megabytes: float, text: bytes) -> Path:
    """`text` repeated to `megabytes` MB (the last story may be cut short), written a piece at a time."""
    left = round(megabytes * 1e6)
    with path.open("wb") as out:
        while left > 0:
            left -= out.write(text[:left])
    return path


def child(corpus: Path, cache: Path) -> dict[str, float]:
    """`load_tokens` of train and val in a fresh process; its own figures, and its whole wall time."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(corpus), str(cache)], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.splitlines()[-1]) | {"process_seconds": time.perf_counter() - start}


def measure(megabytes: float, folder: Path, text: bytes) -> dict[str, float]:
    """Cold (tokenise and cache) then warm, for one corpus size; the corpus and cache are removed after."""
    corpus, cache = folder / f"corpus-{megabytes:g}MB.txt", folder / f"cache-{megabytes:g}"
    write_corpus(corpus, megabytes, text)
    try:
        cold = child(corpus, cache)
        warm = child(corpus, cache)
    finally:
        corpus.unlink()
        for path in cache.iterdir() if cache.exists() else []:
            path.unlink()
    return cold | {"warm_seconds": warm["process_seconds"], "warm_load_seconds": warm["seconds"]}


def slope(sizes: list[float], values: list[float]) -> float:
    """Exponent b of values ~ a * sizes^b (least squares on logs)."""
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def size_table(sizes: tuple[float, ...], rows: list[dict[str, float]], cores: int) -> Table:
    report = table(
        f"data_scale: tokenise + cache train and val, a fresh process per size ({cores} cores)",
        "corpus MB",
        "tokens",
        "cold s",
        "tokens/s",
        "tokens/s per core",
        "tokens/CPU-s",
        "start-up MB",
        "peak MB",
        "warm start s (in load_tokens)",
    )
    for size, row in zip(sizes, rows, strict=True):
        report.add_row(
            f"{size:g}",
            f"{row['tokens']:,}",
            f"{row['seconds']:.1f}",
            f"{row['tokens'] / row['seconds']:,.0f}",
            f"{row['tokens'] / row['seconds'] / cores:,.0f}",
            f"{row['tokens'] / row['cpu_seconds']:,.0f}",
            f"{row['startup_mb']:,.0f}",
            f"{row['peak_mb']:,.0f}",
            f"{row['warm_seconds']:.2f} ({row['warm_load_seconds']:.3f})",
        )
    return report


def run(console: Console, sizes: tuple[float, ...] = SIZES_MB) -> Result:
    text, cores, load = bundled_text(), available_cores(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tstool-data-scale-") as folder:
        rows = [measure(size, Path(folder), text) for size in sizes]
    console.print(size_table(sizes, rows, cores))
    largest, smallest = rows[-1], rows[0]
    time_slope = slope(list(sizes), [r["seconds"] for r in rows])
    cpu_slope = slope(list(sizes), [r["cpu_seconds"] for r in rows])
    memory_slope = slope(list(sizes), [r["peak_mb"] for r in rows])
    growth = largest["peak_mb"] / smallest["peak_mb"]
    rate, warm = largest["tokens"] / largest["seconds"], largest["warm_seconds"]
    checks = [
        (
            "cold time vs size: log-log slope (of CPU time)",
            f"{time_slope:.3f} ({cpu_slope:.3f})",
            "≤ 1.1",
            time_slope <= TARGET_TIME_SLOPE,
        ),
        (
            f"peak memory {sizes[-1]:g} MB / {sizes[0]:g} MB (log-log slope)",
            f"{growth:.3f} ({memory_slope:.3f})",
            "≤ 1.2",
            growth <= TARGET_MEMORY_GROWTH,
        ),
        (f"warm start at {sizes[-1]:g} MB, s", f"{warm:.2f}", "≤ 5", warm <= TARGET_WARM_S),
        (f"tokens/s at {sizes[-1]:g} MB", f"{rate:,.0f}", "≥ 1,000,000", rate >= TARGET_TOKENS_PER_S),
    ]
    report = table("data_scale: targets", "measure", "value", "target", "ok")
    for name, value, target, ok in checks:
        report.add_row(name, value, target, "yes" if ok else "NO")
    console.print(report)
    console.print(f"{cpu_name()} · load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    unit = f"tokens/s tokenising {sizes[-1]:g} MB on {cores} cores"
    return Result("data_scale", rate, unit, TARGET_TOKENS_PER_S, all(c[3] for c in checks), GUARDS)


if __name__ == "__main__":
    run(Console(width=120), tuple(float(size) for size in sys.argv[1:]) or SIZES_MB).emit()
