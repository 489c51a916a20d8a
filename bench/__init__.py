"""Benchmarks of tstool against plain references, run by `python -m bench [NAME ...]` (`make bench`).

Each benchmark module has `run(console) -> Result`: it measures both sides in one process, prints a
Rich table, and its last output line is the JSON of its `Result`. What both sides share lives here:
a timer that interleaves the sides, the training step, the models and the article loss.
"""

from __future__ import annotations

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

from tstool.data.articles import resolve_articles
from tstool.config import ArticleConfig, ModelConfig, TrainConfig, resolve
from tstool.training.loss import ArticleLoss, LossParts, LossTables
from tstool.model.llama import TinyLlama, linear
from tstool.training.optim import build_optimizer
from tstool.training.runtime import autocast
from tstool.data.tokenizer import TextTokenizer, load_tokenizer

Forward = Callable[[torch.Tensor], torch.Tensor]  # tokens (B, T) -> logits (B, T, V)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # logits, targets -> scalar loss
# hidden states (B, T, d), head weight (V, d), targets -> scalar loss: the head and the loss, as tstool trains
HeadLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # tokens, targets -> scalar loss, under autocast
ARTICLE_WEIGHT = 5.0
GPT2_TOKENIZER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gpt2"  # real GPT-2 vocab, merges


@dataclass(frozen=True)
class Result:
    """The one JSON line a benchmark ends with. `target` is a bound; README says which direction."""

    name: str
    value: float
    unit: str
    target: float | None
    ok: bool

    def emit(self) -> Result:
        print(json.dumps(asdict(self) | {"value": round(self.value, 4)}), flush=True)
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
        """numerator/denominator time of each round. The two calls of a round ran back to back, under
        the same load, so these are steadier on a busy machine than a ratio of medians."""
        return [a / b for a, b in zip(self[numerator], self[denominator], strict=True)]

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median over rounds of numerator/denominator time."""
        return statistics.median(self.ratios(numerator, denominator))

    def ratio_quartiles(self, numerator: str, denominator: str) -> tuple[float, float]:
        """First and third quartile of the rounds' ratios: how far one round's ratio strays."""
        first, _, third = statistics.quantiles(self.ratios(numerator, denominator), n=4)
        return first, third

    def ratio_spread(self, numerator: str, denominator: str) -> str:
        """`ratio_quartiles` as a table cell."""
        first, third = self.ratio_quartiles(numerator, denominator)
        return f"{first:.3f}–{third:.3f}"


def one_call_seconds(call: Callable[[], object]) -> float:
    """Runs `call` once and returns its time, such as a first step's, which pays one-time work (compiling, capture)."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timings:
    """Time the sides in turns (A B A B ...), `repeats` rounds after `warmup` untimed ones, so that
    load on the machine, which drifts, hits every side alike. Each callable finishes its own device work."""
    for _ in range(warmup):
        for call in sides.values():
            call()
    times = Timings({name: [] for name in sides})
    for _ in range(repeats):
        for name, call in sides.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def table(title: str, *columns: str) -> Table:
    result = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        result.add_column(column, justify="left" if i == 0 else "right")
    return result


def threads_note(console: Console) -> None:
    console.print(f"torch {torch.__version__} · {torch.get_num_threads()} threads · {cpu_name()}")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


# ---- models, batches and the training step ---------------------------------------------------------


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


def on_logits(loss: LossFn) -> HeadLoss:
    """`loss` on the whole logits of the head, formed first as tstool's model forms them."""
    return lambda hidden, weight, targets: loss(linear(hidden, weight), targets)


def article_loss(
    tok: TextTokenizer,
    device: torch.device,
    weight: float = ARTICLE_WEIGHT,
    cuda_graphs: bool = True,
    whole_logits: bool = False,
    fused: bool = True,
) -> HeadLoss:
    """tstool's training loss (`ArticleLoss.from_hidden`: the head, then weighted CE with the article
    weight table, and its article breakdown); with `whole_logits`, `ArticleLoss` on the head's logits."""
    articles = resolve_articles(tok, ArticleConfig(), require_single=True)
    tables = LossTables.build(articles.weight_table(weight), articles.mask_table()).to(device)
    loss = ArticleLoss(tables, cuda_graphs=cuda_graphs, fused=fused)

    def mean(parts: LossParts) -> torch.Tensor:
        return parts.weighted_sum / parts.weight_sum.float()  # float32, as training scales it

    if whole_logits:
        return on_logits(lambda logits, targets: mean(loss(logits, targets)))
    return lambda hidden, head_weight, targets: mean(loss.from_hidden(hidden, head_weight, targets))


def on_hidden(model: TinyLlama, loss: HeadLoss, forward: nn.Module | None = None) -> BatchLoss:
    """The batch loss of tstool's model as `tstool train` computes it: the hidden states from `forward`
    (default: the model; or a compiled one), then `loss` applies the tied head."""
    forward = model if forward is None else forward
    return lambda x, y: loss(forward(x, head=False), model.lm_head.weight, y)


def tstool_loss(
    model: TinyLlama,
    tok: TextTokenizer,
    weight: float = ARTICLE_WEIGHT,
    forward: nn.Module | None = None,
    whole_logits: bool = False,
) -> BatchLoss:
    """tstool's training loss on its model's batches, at `weight` (`article_loss`)."""
    loss = article_loss(tok, model.lm_head.weight.device, weight, whole_logits=whole_logits)
    return on_hidden(model, loss, forward)


def hf_loss(forward: Forward) -> BatchLoss:
    """Plain CE on a Hugging Face model's logits, as its Trainer computes it."""
    return lambda x, y: plain_loss(forward(x), y)


def train_step(
    model: nn.Module, loss: BatchLoss, x: torch.Tensor, y: torch.Tensor, dtype: str, train: TrainConfig | None = None
) -> Callable[[], None]:
    """One optimizer step as tstool trains: the loss under autocast, backward, and the optimizer of
    `train` (default: tstool's fused AdamW)."""
    device = x.device
    optimizer = build_optimizer(model, train or TrainConfig(), device)

    def step() -> None:
        with autocast(device, dtype):
            value = loss(x, y)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    return step
