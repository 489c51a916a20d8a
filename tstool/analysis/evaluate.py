"""Teacher-forced evaluation of a checkpoint on held-out text, plus the slot and shift probes.

Numbers (all over the same fixed validation blocks as training's evaluation, see `eval_block_ids`):
- loss_unweighted, ppl and bpb (bits per byte: loss / ln 2 / bytes per token, comparable across tokenizers);
- article_loss / other_loss / ratio, as `weighted_cross_entropy` gives them with a weight table of ones;
- article_precision: of positions whose top-1 prediction is an article token (an article's logit
  reaches the row's maximum), the share whose target is an article too. "Correct" means *any* article
  here: precision and recall ask whether the model puts an article where one belongs; whether it picks
  the right one is article_precision_exact / article_acc;
- article_recall: of article targets, the share whose top-1 prediction is any article;
- article_acc: of article targets, the share whose top-1 prediction is exactly the target token (its
  logit above every other; an exact tie for the top is a miss);
- article_p_target: mean probability of the target at article targets; article_mass: mean total
  probability of all article tokens there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from tstool.analysis.calibration import CalibrationSums, Correction, calibration_sums, logit_bias
from tstool.analysis.probes import DEFAULT_CONTEXTS, ShiftProbe, SlotProbe, shift_losses, shift_verdict, slot_probes
from tstool.config import DataConfig
from tstool.data.articles import resolve_articles
from tstool.data.batches import eval_block_ids, gather_blocks, split_block
from tstool.data.corpus import Split, canonical_split
from tstool.data.packing import Progress, load_tokens, require_blocks
from tstool.errors import InputError
from tstool.model.loading import LoadedModel
from tstool.training.loss import ARTICLE, HITS, LossParts, breakdown, top1_hits
from tstool.training.trainer import metrics_from_parts

DEFAULT_MAX_BLOCKS = 256
SPLITS: tuple[Split, ...] = ("train", "val")


@dataclass
class ArticleSums:
    """0-d tensor sums over positions of one or more batches (see the module docstring)."""

    predicted: torch.Tensor  # positions whose top-1 prediction is an article token
    hits: torch.Tensor  # of those, positions whose target is an article as well
    target_prob: torch.Tensor  # sum of p(target) over article targets
    mass: torch.Tensor  # sum of total article probability over article targets

    def __add__(self, other: ArticleSums) -> ArticleSums:
        return ArticleSums(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass
class Positions:
    """Per-position numbers of logits (N, V) against targets (N,), from one max and one log-softmax over
    the logits; the rest gathers from those and the K article columns. Passes over 50k-wide rows, not
    the model, bound an evaluation (docs/performance.md, `eval_vs_hf`)."""

    log_probs: torch.Tensor  # (N, V), in the logits' own buffer
    ce: torch.Tensor  # (N,) cross-entropy against the target
    log_norm: torch.Tensor  # (N,) logsumexp of each row
    is_article: torch.Tensor  # (N,) bool: the target is an article
    predicted: torch.Tensor  # (N,) bool: an article's logit reaches the row's maximum (a top-1 article)
    exact: torch.Tensor  # (N,) bool: an article target's logit is the row's maximum, alone (`top1_hits`)
    mass: torch.Tensor  # (N,) total article probability

    @classmethod
    def read(cls, logits: torch.Tensor, targets: torch.Tensor, article_mask: torch.Tensor) -> Positions:
        """Of logits (..., V) against targets (...). Float32 logits are overwritten with their
        log-probabilities: a second buffer the size of the logits, as `F.cross_entropy` allocates, costs
        a CPU about 4% of an evaluation (`bench eval_vs_hf`)."""
        flat, targets = logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)  # (N, V), (N,)
        best = flat.amax(dim=1)
        target_logit = flat.gather(1, targets[:, None]).squeeze(1)
        article_logits = flat[:, article_mask]  # (N, K), a copy
        is_article = article_mask[targets]
        # ties are looked for only where an article target's logit reaches the row's maximum: a few rows
        exact = top1_hits(flat, targets, rows=is_article & (target_logit >= best), best=best)
        log_probs = torch.log_softmax(flat, dim=1, out=flat)
        ce = log_probs.gather(1, targets[:, None]).squeeze(1).neg()
        log_norm = target_logit + ce
        return cls(
            log_probs=log_probs,
            ce=ce,
            log_norm=log_norm,
            is_article=is_article,
            predicted=article_logits.amax(dim=1) >= best,
            exact=exact,
            mass=(article_logits - log_norm[:, None]).exp().sum(dim=1),
        )

    def loss(self) -> LossParts:
        """The loss sums `weighted_cross_entropy` gives with a weight table of ones."""
        ones = torch.ones_like(self.ce)
        return LossParts(self.ce.sum(), breakdown(self.ce, ones, self.is_article, self.exact, ones))

    def articles(self) -> ArticleSums:
        return ArticleSums(
            predicted=self.predicted.sum(),
            hits=(self.predicted & self.is_article).sum(),
            target_prob=self.ce[self.is_article].neg().exp().sum(),
            mass=self.mass[self.is_article].sum(),
        )


@dataclass
class EvalSums:
    """Everything teacher-forced evaluation accumulates over batches."""

    loss: LossParts
    articles: ArticleSums
    calibration: CalibrationSums
    shift: torch.Tensor  # (blocks, 2) mean CE of each block against the next and the after-next token
    shift_count: int  # positions

    def __add__(self, other: EvalSums) -> EvalSums:
        return EvalSums(
            self.loss + other.loss,
            self.articles + other.articles,
            self.calibration + other.calibration,
            torch.cat([self.shift, other.shift]),
            self.shift_count + other.shift_count,
        )

    def metrics(self, bytes_per_token: float) -> dict[str, float | int | None]:
        base = metrics_from_parts(self.loss)
        art = {f.name: float(getattr(self.articles, f.name)) for f in fields(self.articles)}
        targets, correct = base["article_tokens"], float(self.loss.totals[ARTICLE, HITS])

        def share(part: float, whole: float) -> float | None:
            return part / whole if whole else None

        loss = base["loss_unweighted"]
        return {
            "loss_unweighted": loss,
            "ppl": base["ppl"],
            "bpb": loss / math.log(2) / bytes_per_token if loss is not None else None,
            "article_loss": base["article_loss"],
            "other_loss": base["other_loss"],
            "ratio": base["ratio"],
            "article_precision": share(art["hits"], art["predicted"]),
            "article_recall": share(art["hits"], targets),
            # an exact hit is an article target predicted exactly, so both exact shares share a numerator
            "article_precision_exact": share(correct, art["predicted"]),
            "article_acc": base["article_acc"],
            "article_p_target": share(art["target_prob"], targets),
            "article_mass": share(art["mass"], targets),
            "tokens": base["tokens"],
            "article_tokens": targets,
            "predicted_articles": int(art["predicted"]),
        }

    def shift_probe(self) -> ShiftProbe:
        return shift_verdict(self.shift, self.shift_count)


def score_logits(logits: torch.Tensor, y: torch.Tensor, article_mask: torch.Tensor) -> EvalSums:
    """The sums of logits (B, T, V) against next-token targets y (B, T) from `split_block`. Float32
    logits are overwritten with their log-probabilities (`Positions.read`); pass a copy to keep them."""
    positions = Positions.read(logits, y, article_mask)
    return EvalSums(
        loss=positions.loss(),
        articles=positions.articles(),
        calibration=calibration_sums(positions.mass, positions.is_article),
        shift=shift_losses(positions.log_probs.view(*y.shape, -1), y),
        shift_count=y.size(0) * (y.size(1) - 1),
    )


def check_split(split: str) -> Split:
    """The split as `load_tokens` takes it (`validation` is `val`); anything else is an InputError."""
    name = canonical_split(split)
    if name not in SPLITS:
        raise InputError(f"unknown split '{split}': use --split val (or validation) or --split train")
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class EvalReport:
    checkpoint: str
    model: str  # which model this is, in words (`LoadedModel.describe`)
    step: int | None  # the training step read; None for a model tstool did not train
    article_weight: float  # what the model was trained with, for reading the ratio
    data: dict[str, Any]  # source, split, stories, tokens, bytes_per_token, blocks, seq_len
    article_forms: list[dict[str, Any]]  # text and token ID of each single-token form
    metrics: dict[str, float | int | None]  # of the model as used: with the correction, if one is applied
    correction: Correction
    calibration: dict[str, dict[str, Any]]  # "raw" and, when a correction is applied, "corrected"
    shift: ShiftProbe  # of the logits scored (corrected when a correction is applied)
    # slot probes: of the raw model
    slots: list[SlotProbe]

    @property
    def ok(self) -> bool:
        return self.shift.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("shift", "slots", "correction")},
            "correction": self.correction.to_dict(),
            "ok": self.ok,
            "shift_probe": self.shift.to_dict(),
            "slot_probes": [s.to_dict() for s in self.slots],
        }


def _source(cfg: DataConfig) -> str:
    return cfg.dataset or ", ".join(cfg.files) or "bundled TinyStories sample"


@torch.inference_mode()
def evaluate(
    loaded: LoadedModel,
    data: DataConfig,
    split: str = "val",
    max_blocks: int | None = DEFAULT_MAX_BLOCKS,
    contexts: Sequence[str] = DEFAULT_CONTEXTS,
    progress: Progress | None = None,
    correction: Correction | None = None,
) -> EvalReport:
    """Evaluate `loaded` on `split` of `data`, tokenised with the model's own tokenizer.

    `max_blocks` caps the blocks of max_seq_len + 1 tokens (None: every block); `progress(done, total)`
    is called after each batch. With a `correction` the metrics are the corrected model's, and the
    calibration is given raw and corrected.
    """
    correction = correction or Correction(0.0, "none")
    bias = logit_bias(loaded, correction)
    cfg, model, device = loaded.config, loaded.model, loaded.device
    seq_len = cfg.model.max_seq_len
    articles = resolve_articles(loaded.tokenizer, cfg.articles)
    mask = articles.mask_table().to(device)
    stream = load_tokens(data, check_split(split), loaded.tokenizer)
    require_blocks(stream, seq_len, split)
    block_ids = eval_block_ids(len(stream.tokens), seq_len, max_blocks or len(stream.tokens))
    batch = cfg.train.batch_size
    sums: EvalSums | None = None
    raw_calibration: CalibrationSums | None = None
    for start in range(0, len(block_ids), batch):
        x, y = split_block(gather_blocks(stream.tokens, block_ids[start : start + batch], seq_len))
        logits, y = model(x.to(device)), y.to(device)
        part = score_logits(logits if bias is None else logits + bias, y, mask)
        sums = part if sums is None else sums + part
        if bias is not None:
            raw = Positions.read(logits, y, mask)
            raw_part = calibration_sums(raw.mass, raw.is_article)
            raw_calibration = raw_part if raw_calibration is None else raw_calibration + raw_part
        if progress:
            progress(min(start + batch, len(block_ids)), len(block_ids))
    assert sums is not None  # require_blocks guarantees at least one block
    return EvalReport(
        checkpoint=str(loaded.path),
        model=loaded.describe(),
        step=loaded.step if loaded.origin == "tstool" else None,
        article_weight=loaded.config.train.article_weight,
        data={
            "source": _source(data),
            "split": split,
            "stories": stream.num_stories,
            "tokens": len(stream.tokens),
            "bytes_per_token": stream.bytes_per_token,
            "blocks": len(block_ids),
            "seq_len": seq_len,
        },
        article_forms=[{"text": f.text, "id": f.ids[0]} for f in articles.forms if f.single_token],
        metrics=sums.metrics(stream.bytes_per_token),
        correction=correction,
        calibration=(
            {"raw": raw_calibration.report(), "corrected": sums.calibration.report()}
            if raw_calibration is not None
            else {"raw": sums.calibration.report()}
        ),
        shift=sums.shift_probe(),
        slots=slot_probes(model, loaded.tokenizer, articles, contexts),
    )
