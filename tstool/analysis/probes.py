"""Probes of a trained model: what it predicts in article slots, and which target it learned to predict.

Slot probe: after a context that needs an article next ("She saw"), the probability and rank of every
single-token article form and the total article mass. Shift probe: the teacher-forced loss of the same
logits against the next token and against the token after next; a model trained on labels shifted
twice (the predecessor's bug) predicts the token after next better.

(The current token is no useful third target: with tied embeddings a weakly trained but correct model
already scores its own input better than the next token.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from tstool.data.articles import ArticleSet
from tstool.data.tokenizer import TextTokenizer
from tstool.model.loading import LanguageModel, model_device

DEFAULT_CONTEXTS: tuple[str, ...] = (
    "Once upon a time there was",
    "She saw",
    "He found",
    "They went to",
    "One day, Lily found",
    "Tom wanted to buy",
    "Once upon a time, in",
)
# Losses closer than this (nats per token) are too close to call: an untrained model scores every
# offset near ln(vocab), so a tiny gap says nothing about how it was trained.
SHIFT_MARGIN = 0.05
ShiftVerdict = Literal["aligned", "misaligned", "inconclusive"]


# -- slot probe ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArticleProb:
    text: str
    form: str
    token_id: int
    prob: float
    rank: int  # 1 = the model's top prediction


@dataclass(frozen=True)
class SlotProbe:
    context: str
    article_mass: float  # total probability of all article tokens
    top_token: str
    top_prob: float
    articles: tuple[ArticleProb, ...]  # one per single-token article form, in resolution order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_token_probs(model: LanguageModel, ids: Sequence[int]) -> torch.Tensor:
    """Probabilities (V,) of the token after `ids`, on the model's device, in float32."""
    device = model_device(model)
    ids = list(ids)[-model.cfg.max_seq_len :]
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long, device=device))[0, -1]
    return logits.float().softmax(dim=-1)


def ranks_of(probs: torch.Tensor, token_ids: Sequence[int]) -> list[int]:
    """1-based rank of each token in probs (V,): one plus the number of tokens strictly more likely."""
    chosen = probs[list(token_ids)]  # (K,)
    return ((probs[None, :] > chosen[:, None]).sum(dim=-1) + 1).tolist()


def slot_probe(model: LanguageModel, tokenizer: TextTokenizer, articles: ArticleSet, context: str) -> SlotProbe:
    """Article probabilities after `context`, which follows <|endoftext|> as every story does in training."""
    probs = next_token_probs(model, [tokenizer.eot_id, *tokenizer.encode(context)])
    forms = [f for f in articles.forms if f.single_token]
    ids = [f.ids[0] for f in forms]
    ranks = ranks_of(probs, ids)
    top = int(probs.argmax())
    return SlotProbe(
        context=context,
        article_mass=float(probs[articles.ids].sum()),
        top_token=tokenizer.token(top),
        top_prob=float(probs[top]),
        articles=tuple(
            ArticleProb(text=f.text, form=f.form, token_id=i, prob=float(probs[i]), rank=r)
            for f, i, r in zip(forms, ids, ranks, strict=True)
        ),
    )


def slot_probes(
    model: LanguageModel, tokenizer: TextTokenizer, articles: ArticleSet, contexts: Sequence[str] = DEFAULT_CONTEXTS
) -> list[SlotProbe]:
    return [slot_probe(model, tokenizer, articles, c) for c in contexts]


# -- shift probe -----------------------------------------------------------------------------------
def shift_sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """CE sums (2,) of logits (B, T, V) against the next and the after-next token, and their count.

    y (B, T) are `split_block`'s next-token targets; y[:, 1:] is the token after next, a target
    misaligned on purpose for this probe only. Positions 0..T-2 serve both, so the sums compare like
    for like.
    """
    logp = logits[:, :-1].reshape(-1, logits.size(-1)).float().log_softmax(dim=-1)  # (N, V), N = B*(T-1)
    targets = torch.stack([y[:, :-1].reshape(-1), y[:, 1:].reshape(-1)], dim=1)  # (N, 2): next, after next
    return -logp.gather(1, targets).sum(dim=0), logp.size(0)


@dataclass(frozen=True)
class ShiftProbe:
    next_loss: float  # mean CE against the next token: what training optimises
    after_next_loss: float  # mean CE against the token after next
    tokens: int
    verdict: ShiftVerdict
    message: str

    @property
    def ok(self) -> bool:
        return self.verdict != "misaligned"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin": SHIFT_MARGIN}


def shift_verdict(next_loss: float, after_next_loss: float, tokens: int) -> ShiftProbe:
    """Misaligned when the token after next is predicted better by more than SHIFT_MARGIN, aligned when
    the next token is by more than it, inconclusive in between."""
    gap = after_next_loss - next_loss
    if gap < -SHIFT_MARGIN:
        verdict: ShiftVerdict = "misaligned"
        message = (
            f"loss against the token after next ({after_next_loss:.3f}) is lower than against the next token "
            f"({next_loss:.3f}): the model was trained on labels shifted twice (the double-shift bug); "
            "shift labels exactly once and retrain"
        )
    elif gap <= SHIFT_MARGIN:
        verdict = "inconclusive"
        message = (
            f"loss against the next token ({next_loss:.3f}) and the token after next ({after_next_loss:.3f}) "
            f"differ by less than {SHIFT_MARGIN}: the model is too weak to tell how its labels were aligned"
        )
    else:
        verdict = "aligned"
        message = (
            f"loss against the next token ({next_loss:.3f}) is {gap:.3f} below the token after next "
            f"({after_next_loss:.3f}): labels were aligned"
        )
    return ShiftProbe(next_loss, after_next_loss, tokens, verdict, message)
