"""Evaluation throughput of a transformers model through tstool's `evaluate()` against a plain
transformers evaluation loop over the same blocks.

The model is a GPT-Neo of TinyStories-8M's shape (width 256, 8 layers, GPT-2's 50,257-token vocabulary,
local and global attention), random weights, saved with save_pretrained beside the GPT-2 tokenizer files
and loaded the way `tstool eval --checkpoint FOLDER` loads it. Both sides score the same validation
blocks of the bundled sample, 512 tokens each, in batches of the size tstool picks: tstool computes
everything `tstool eval` reports (loss, article metrics, calibration, shift probe, slot probes); the
plain loop `model(x).logits` and cross-entropy under no_grad, as one would write it. A third side, the
plain loop scoring its logits with tstool's metrics (`score_logits`), is shown: what the diagnoses cost,
apart from the seam (the adapter, the token cache, the slot probes).

Value: tstool's tokens/s over the plain loop's, median over paired rounds.
Target: >= 0.95: the seam and the diagnoses cost at most 5% of an evaluation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from bench import GPT2_TOKENIZER, Result, Spread, devices, interleaved, table, threads_note
from tstool.analysis.evaluate import evaluate, score_logits
from tstool.config import DataConfig
from tstool.data.articles import resolve_articles
from tstool.data.batches import eval_block_ids, gather_blocks, split_block
from tstool.data.packing import load_tokens
from tstool.model.loading import LoadedModel, load_any_model

BLOCKS = 8  # of 512 tokens: 4,096 tokens a round
ROUNDS = 20  # a round strays by about +-3%; 20 keep the median within about +-1% from run to run
TARGET = 0.95
GUARDS = "evaluating a transformers model through tstool costs at most 5% over a plain loop (median >= 0.95)"
TSTOOL, PLAIN, METRICS = "tstool evaluate()", "plain transformers loop", "plain loop + tstool's metrics"


def save_model(folder: Path) -> Path:
    """A TinyStories-8M-shaped GPT-Neo with random weights and the GPT-2 tokenizer files."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    config = transformers.GPTNeoConfig(
        vocab_size=50257,
        max_position_embeddings=2048,
        hidden_size=256,
        num_layers=8,
        num_heads=16,
        attention_types=[[["global", "local"], 4]],
        window_size=256,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    torch.manual_seed(0)
    transformers.GPTNeoForCausalLM(config).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_TOKENIZER / name, folder / name)
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    return folder


Score = Callable[[torch.Tensor, torch.Tensor], float]  # logits, targets -> summed cross-entropy


def plain_loop(loaded: LoadedModel, data: DataConfig, blocks: int, score: Score) -> Callable[[], float]:
    """Mean cross-entropy over evaluate()'s blocks and batches, by the transformers model alone, each
    batch's logits scored by `score`."""
    cfg, hf_model = loaded.config, loaded.model.hf_model
    seq_len, batch = cfg.model.max_seq_len, cfg.train.batch_size
    stream = load_tokens(data, "val", loaded.tokenizer)
    block_ids = eval_block_ids(len(stream.tokens), seq_len, blocks)

    def run() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(block_ids), batch):
                x, y = split_block(gather_blocks(stream.tokens, block_ids[start : start + batch], seq_len))
                y = y.to(loaded.device)
                total += score(hf_model(x.to(loaded.device)).logits, y)
                count += y.numel()
        return total / count

    return run


def plain_score(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))


def tstool_score(loaded: LoadedModel) -> Score:
    """tstool's metrics of a batch (`score_logits`), its loss sum returned."""
    mask = resolve_articles(loaded.tokenizer, loaded.config.articles).mask_table().to(loaded.device)
    return lambda logits, targets: float(score_logits(logits, targets, mask).loss.ce_sum)


def measure(device: torch.device, console: Console, rounds: int, blocks: int) -> Spread:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_any_model(save_model(Path(tmp) / "neo"), device)
        data = loaded.config.data
        sides = {
            TSTOOL: lambda: evaluate(loaded, data, "val", blocks),
            PLAIN: plain_loop(loaded, data, blocks, plain_score),
            METRICS: plain_loop(loaded, data, blocks, tstool_score(loaded)),
        }
        loss = evaluate(loaded, data, "val", blocks).metrics["loss_unweighted"]  # warms the token cache
        plain = sides[PLAIN]()
        seconds = interleaved(sides, rounds)
    cfg = loaded.config
    tokens = blocks * cfg.model.max_seq_len
    versus = seconds.ratio(PLAIN, TSTOOL)  # time ratio = tokens/s ratio, tstool over plain
    title = (
        f"eval_vs_hf: GPT-Neo 8M shape, {blocks} blocks of {cfg.model.max_seq_len} tokens, "
        f"batch {cfg.train.batch_size}, {device.type}"
    )
    report = table(title, "side", "loss", "tok/s (median)", "vs plain: median (quartiles)")
    report.add_row(TSTOOL, f"{loss:.4f}", f"{tokens / seconds.median(TSTOOL):,.0f}", str(versus))
    report.add_row(METRICS, "", f"{tokens / seconds.median(METRICS):,.0f}", str(seconds.ratio(PLAIN, METRICS)))
    report.add_row(PLAIN, f"{plain:.4f}", f"{tokens / seconds.median(PLAIN):,.0f}", "1")
    console.print(report)
    return versus


def run(console: Console, rounds: int = ROUNDS, blocks: int = BLOCKS) -> Result:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # read on import: never the network
        os.environ.setdefault(name, "1")
    worst = min((measure(device, console, rounds, blocks) for device in devices()), key=lambda s: s.median)
    threads_note(console)
    unit = "tokens/s ratio, tstool evaluate() / plain transformers loop (worst device)"
    return Result.of("eval_vs_hf", worst, unit, TARGET, worst.median >= TARGET, GUARDS)
