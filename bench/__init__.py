"""Benchmarks of tstool against plain references, run by `python -m bench [NAME ...]` (`make bench`).

Each benchmark module has `run(console) -> Result`: it measures its sides in one process (or in
fresh processes, in turns), prints a Rich table, and its last output line is the JSON of its `Result`,
which says what its target guards. What the benchmarks share lives here: the paired timer and its
quartiles, the models, the losses and the training step.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from tstool.config import ArticleConfig, Config, ModelConfig, TrainConfig, resolve
from tstool.data.articles import resolve_articles
from tstool.data.tokenizer import TextTokenizer, load_tokenizer
from tstool.fast import head_loss
from tstool.model.llama import TinyLlama
from tstool.training.loss import HeadLoss, LossTables
from tstool.training.optim import Optimizer, build_optimizer
from tstool.training.runtime import autocast

Forward = Callable[[torch.Tensor], torch.Tensor]  # tokens (B, T) -> logits (B, T, V)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # logits, targets -> scalar loss
# hidden states (B, T, d), head weight (V, d), targets -> scalar loss: the head and the loss, as tstool trains
ScalarHeadLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # tokens, targets -> scalar loss, under autocast
ARTICLE_WEIGHT = 5.0
GPT2_TOKENIZER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gpt2"  # real GPT-2 vocab, merges
# CPU flags of bf16 arithmetic in hardware (x86: AVX-512 BF16, AMX; Arm: BF16)
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


# ---- results and the paired timer ------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of paired rounds' ratios: how far one round strays shows whether a median
    near a bound is a difference or noise."""

    median: float
    low: float  # first quartile
    high: float  # third quartile

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        low, median, high = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, low, high)

    @property
    def quartiles(self) -> str:
        return f"{self.low:.3f}–{self.high:.3f}"

    def __str__(self) -> str:
        return f"{self.median:.3f} ({self.quartiles})"


@dataclass(frozen=True)
class Result:
    """The one JSON line a benchmark ends with. `guards` says what the target protects and which way
    the bound goes; `ok` is None where nothing was measured against it (a device this machine lacks, or
    a figure tracked without a target)."""

    name: str
    value: float | None
    unit: str
    target: float | None
    ok: bool | None
    guards: str
    quartiles: tuple[float, float] | None = None

    @classmethod
    def of(cls, name: str, spread: Spread, unit: str, target: float, ok: bool, guards: str) -> Result:
        return cls(name, spread.median, unit, target, ok, guards, (spread.low, spread.high))

    def emit(self) -> Result:
        rounded = {
            "value": None if self.value is None else round(self.value, 4),
            "quartiles": None if self.quartiles is None else [round(q, 4) for q in self.quartiles],
        }
        print(json.dumps(asdict(self) | rounded, ensure_ascii=False), flush=True)
        return self


def devices() -> list[torch.device]:
    """CPU, and CUDA when this machine has it; TSTOOL_BENCH_DEVICES=cuda (or cpu) keeps one of them."""
    found = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    wanted = os.environ.get("TSTOOL_BENCH_DEVICES")
    chosen = [name for name in found if not wanted or name in wanted.split(",")]
    if not chosen:
        raise SystemExit(f"TSTOOL_BENCH_DEVICES={wanted} names no device this machine has ({', '.join(found)})")
    return [torch.device(name) for name in chosen]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timings(dict[str, list[float]]):
    """Seconds per call of each side, one entry per round of `interleaved`."""

    def median(self, side: str) -> float:
        return statistics.median(self[side])

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        """numerator/denominator time of each round. The two sides of a round ran back to back, under
        the same load, so these are steadier on a busy machine than a ratio of medians."""
        return [a / b for a, b in zip(self[numerator], self[denominator], strict=True)]

    def ratio(self, numerator: str, denominator: str) -> Spread:
        """Median and quartiles over rounds of numerator/denominator time."""
        return Spread.of(self.ratios(numerator, denominator))


def seconds_per_call(call: Callable[[], object], calls: int = 1) -> float:
    """Mean seconds of `calls` calls of `call` in a row; of one, such as a first step's, which pays
    one-time work (compiling, capture)."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def paired_rounds(measures: dict[str, Callable[[], float]], rounds: int) -> Timings:
    """Each side's measurement (seconds), once per round, the sides back to back so that load on the
    machine, which drifts, hits them alike; their order reverses every round (A B, B A, ...), so that
    neither side always runs on caches, or a machine, that the other left."""
    times = Timings({name: [] for name in measures})
    order = list(measures.items())
    for _ in range(rounds):
        for name, measure in order:
            times[name].append(measure())
        order.reverse()
    return times


def interleaved(sides: dict[str, Callable[[], object]], rounds: int, warmup: int = 1, calls: int = 1) -> Timings:
    """`paired_rounds` of the sides' calls after `warmup` untimed rounds; each round's entry is the mean
    of `calls` calls in a row. Each callable finishes its own device work."""
    for _ in range(warmup):
        for call in sides.values():
            call()
    measures = {name: functools.partial(seconds_per_call, call, calls) for name, call in sides.items()}
    return paired_rounds(measures, rounds)


def table(title: str, *columns: str) -> Table:
    result = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        result.add_column(column, justify="left" if i == 0 else "right")
    return result


def threads_note(console: Console) -> None:
    bf16 = "bf16 hardware" if cpu_has_bf16() else "no bf16 hardware"
    console.print(f"torch {torch.__version__} · {torch.get_num_threads()} threads · {cpu_name()} ({bf16})")


def cpu_info(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo; empty where there is none (not Linux)."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return ""


def cpu_name() -> str:
    return cpu_info("model name") or "unknown CPU"


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware. Without it, bf16 matmuls are emulated and
    slower than fp32, so the bf16 CPU cases are targeted only where it is present (and faster)."""
    flags = set((cpu_info("flags") or cpu_info("Features")).split())
    return bool(flags & BF16_CPU_FLAGS)


# ---- models, batches, losses and the training step -------------------------------------------------


def tokenizer() -> TextTokenizer:
    """The shipped tokenizer: its vocabulary sets the embedding and head sizes."""
    return load_tokenizer()


def model_config(preset: str) -> ModelConfig:
    return resolve(preset).model


def tstool_model(cfg: ModelConfig, vocab_size: int, device: torch.device, seed: int = 0) -> TinyLlama:
    torch.manual_seed(seed)
    return TinyLlama(cfg, vocab_size).to(device)


def hf_twin(model: TinyLlama, tok: TextTokenizer, folder: Path) -> nn.Module:
    """transformers' LlamaForCausalLM with `model`'s weights, loaded from its tstool export (SDPA attention)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # read on import: never the network
        os.environ.setdefault(name, "1")
    import transformers

    from tstool.model.hf_export import write_hf_folder

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    write_hf_folder(model, tok, folder, overwrite=True)
    device = model.embed_tokens.weight.device
    twin = transformers.LlamaForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="sdpa")
    return twin.to(device)


def hf_forward(model: nn.Module) -> Forward:
    return lambda x: model(input_ids=x, use_cache=False).logits


def batch(vocab_size: int, batch_size: int, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token blocks as inputs and next-token targets, the same for every side (fixed seed)."""
    blocks = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(0))
    return blocks[:, :-1].to(device), blocks[:, 1:].to(device)


def plain_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Standard mean cross-entropy in float32: the reference every loss is timed against."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def on_logits(loss: LossFn) -> ScalarHeadLoss:
    """`loss` on the head's logits, formed as tstool's model forms them."""
    return lambda hidden, weight, targets: loss(F.linear(hidden, weight), targets)


def loss_tables(
    tok: TextTokenizer, device: torch.device, weight: float = ARTICLE_WEIGHT, logit_adjusted: bool = False
) -> LossTables:
    """The tables of tstool's loss at article weight `weight`, as `tstool train` builds them."""
    articles = resolve_articles(tok, ArticleConfig(), require_single=True)
    return LossTables.build(articles.weight_table(weight), articles.mask_table(), logit_adjusted).to(device)


def weighted_mean(loss: HeadLoss) -> ScalarHeadLoss:
    """tstool's loss as one scalar: the weighted sum over the total weight. Training divides by the
    total weight too, summed from the targets on the CPU; here the loss's own totals give it."""

    def mean(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        parts = loss(hidden, weight, targets)
        return parts.weighted_sum / parts.weight_sum.float()  # float32, as training scales it

    return mean


def article_loss(
    tok: TextTokenizer,
    device: torch.device,
    weight: float = ARTICLE_WEIGHT,
    fast_paths: bool = True,
    logit_adjusted: bool = False,
) -> ScalarHeadLoss:
    """tstool's training loss, the head and weighted CE with its article breakdown, as `tstool train`
    picks it for `device` (`tstool.fast.head_loss`; with `fast_paths` off, the reference `HeadLoss`)."""
    return weighted_mean(head_loss(loss_tables(tok, device, weight, logit_adjusted), device, fast_paths))


def on_hidden(model: TinyLlama, loss: ScalarHeadLoss, forward: nn.Module | None = None) -> BatchLoss:
    """The batch loss of tstool's model as `tstool train` computes it: the hidden states from `forward`
    (default: the model; or a compiled one), then `loss` applies the tied head."""
    forward = model if forward is None else forward
    return lambda x, y: loss(forward(x, head=False), model.lm_head.weight, y)


def tstool_loss(
    model: TinyLlama, tok: TextTokenizer, weight: float = ARTICLE_WEIGHT, forward: nn.Module | None = None
) -> BatchLoss:
    """tstool's training loss on its model's batches, at `weight` (`article_loss`)."""
    return on_hidden(model, article_loss(tok, model.lm_head.weight.device, weight), forward)


def hf_loss(forward: Forward) -> BatchLoss:
    """Plain CE on a Hugging Face model's logits, as its Trainer computes it."""
    return lambda x, y: plain_loss(forward(x), y)


def train_step(
    model: nn.Module,
    loss: BatchLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: str,
    train: TrainConfig | None = None,
    optimizer: Optimizer | None = None,
) -> Callable[[], None]:
    """One optimizer step as `tstool train` runs it: the loss under autocast, backward, the gradient
    norm (clipped at `train.grad_clip`), and `optimizer` (default: the one `train` builds; tstool's
    default settings give fused AdamW)."""
    device, train = x.device, train or TrainConfig()
    optimizer = optimizer or build_optimizer(model, train, device)

    def step() -> None:
        with autocast(device, dtype):
            value = loss(x, y)
        value.backward()
        nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    return step


def preset_step(
    model: TinyLlama,
    tok: TextTokenizer,
    cfg: Config,
    x: torch.Tensor,
    y: torch.Tensor,
    fast_paths: bool = True,
    optimizer: Optimizer | None = None,
) -> Callable[[], None]:
    """A training step of preset `cfg` as `tstool train` runs it: its loss (article weight, logit
    adjustment), dtype, gradient clipping and optimizer (default: the one it builds)."""
    train = cfg.train
    loss = on_hidden(model, article_loss(tok, x.device, train.article_weight, fast_paths, train.logit_adjusted))
    return train_step(model, loss, x, y, train.dtype, train, optimizer)


def preset_batch(cfg: Config, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` at preset `cfg`'s batch size and sequence length."""
    return batch(vocab_size, cfg.train.batch_size, cfg.model.max_seq_len, device)
