"""Article surface forms, resolved to token IDs from the tokenizer in use (never hard-coded).

This is the one resolution used by training (the weight table), statistics and scoring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tstool.config import ArticleConfig, ArticleForm
from tstool.data.tokenizer import TextTokenizer
from tstool.errors import TokenizerError

if TYPE_CHECKING:
    import torch

FORM_TEXT: dict[ArticleForm, Callable[[str], str]] = {
    "lower_space": lambda word: " " + word.lower(),
    "lower_bare": lambda word: word.lower(),
    "cap_space": lambda word: " " + word.capitalize(),
    "cap_bare": lambda word: word.capitalize(),
}

ALL_FORMS: tuple[ArticleForm, ...] = tuple(FORM_TEXT)
# Measured on the bundled sample with the shipped tokenizer: 477 of 479 bare 'a' tokens and all 141
# bare 'an' tokens sit inside longer words, so weighting them would weight word pieces, not articles.
DEFAULT_FORMS: tuple[ArticleForm, ...] = ("lower_space", "cap_space", "cap_bare")
# A word for a spaced form to follow, so that the form is encoded as it occurs mid-sentence.
ANCHOR = "x"


@dataclass(frozen=True)
class ResolvedForm:
    """One surface form of one article word and the tokens it encodes to."""

    word: str
    form: ArticleForm
    text: str
    ids: tuple[int, ...]

    @property
    def single_token(self) -> bool:
        return len(self.ids) == 1


@dataclass(frozen=True)
class ArticleSet:
    """The resolved article forms of one tokenizer."""

    forms: tuple[ResolvedForm, ...]
    vocab_size: int
    tokenizer_sha256: str

    @property
    def ids(self) -> list[int]:
        """IDs of the single-token forms: the tokens weighted and counted as articles."""
        return sorted({f.ids[0] for f in self.forms if f.single_token})

    @property
    def multi_token(self) -> list[ResolvedForm]:
        return [f for f in self.forms if not f.single_token]

    def form_of(self, token_id: int) -> ResolvedForm | None:
        return next((f for f in self.forms if f.single_token and f.ids[0] == token_id), None)

    def mask_table(self) -> torch.Tensor:
        """Boolean table over the vocabulary: True at article IDs."""
        import torch

        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[self.ids] = True
        return mask

    def weight_table(self, article_weight: float) -> torch.Tensor:
        """Per-target loss weight: 1.0 everywhere, `article_weight` at article IDs."""
        import torch

        table = torch.ones(self.vocab_size, dtype=torch.float32)
        table[self.ids] = article_weight
        return table


def form_ids(tokenizer: TextTokenizer, text: str) -> tuple[int, ...]:
    """The tokens `text` takes where it occurs: a bare form at the start of a text, a spaced form after a word.

    SentencePiece tokenizers mark a word's start with "▁" and may add one of their own at the start of a
    text, so " a" alone can encode as "▁" + "▁a" although mid-sentence it is "▁a": a spaced form is
    encoded after ANCHOR and ANCHOR's tokens cut off. Byte-level BPE gives the same either way.
    """
    if not text.startswith(" "):
        return tuple(tokenizer.encode(text))
    anchor = tokenizer.encode(ANCHOR)
    ids = tokenizer.encode(ANCHOR + text)
    if ids[: len(anchor)] != anchor:  # the form merged into the anchor: no clean cut, so encode it alone
        return tuple(tokenizer.encode(text))
    return tuple(ids[len(anchor) :])


def resolve_articles(tokenizer: TextTokenizer, cfg: ArticleConfig, require_single: bool = False) -> ArticleSet:
    """Encode every configured form of every article word with `tokenizer`.

    With no forms configured, every single-token form among DEFAULT_FORMS counts and multi-token
    forms are left out.
    With forms named explicitly and `require_single` (training with article weight != 1), a named
    form that is several tokens is an error unless `cfg.allow_multi_token`, because its weight could
    not be applied to one target.
    """
    forms = []
    for word in cfg.words:
        for form in cfg.forms or DEFAULT_FORMS:
            text = FORM_TEXT[form](word)
            forms.append(ResolvedForm(word=word.lower(), form=form, text=text, ids=form_ids(tokenizer, text)))
    resolved = ArticleSet(forms=tuple(forms), vocab_size=tokenizer.vocab_size, tokenizer_sha256=tokenizer.sha256)
    if require_single and cfg.forms is not None and resolved.multi_token and not cfg.allow_multi_token:
        bad = resolved.multi_token[0]
        raise TokenizerError(
            f"article form {bad.text!r} is {len(bad.ids)} tokens {list(bad.ids)} in tokenizer {tokenizer.source}, "
            "so its weight cannot apply to one target: pass --allow-multi-token-articles to weight only "
            "single-token forms, or choose forms with --set articles.forms=[...]"
        )
    if not resolved.ids:
        raise TokenizerError(
            f"no article form is a single token in tokenizer {tokenizer.source}: train a tokenizer on English text"
        )
    return resolved
