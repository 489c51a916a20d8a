"""Sampling continuations from a trained model: KV-cache decoding, temperature, top-k, top-p (nucleus),
CTRL repetition penalty, greedy decoding; a sample ends at <|endoftext|> or after `max_new_tokens`.

The samples of one prompt decode together as one batch. All randomness comes from a torch.Generator
seeded per prompt from the call's seed, so the same seed, settings and prompts give the same text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError

from tstool.config import GenerateConfig
from tstool.errors import ConfigError, InputError
from tstool.model.loading import LanguageModel, LoadedModel, model_device

# Typical TinyStories openings.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Once upon a time there was",
    "One day, a little girl named Lily",
    "Tom and his dog went to the park.",
    "There was a big",
    "The sun was shining and",
)
# When decoding runs past the context, the cache is rebuilt from this share of it, which leaves room
# for the next quarter-context of tokens before the next rebuild.
SLIDE_KEEP = 0.75

StopReason = Literal["eot", "length"]
Progress = Callable[[int, int], None]


def sampling_settings(base: GenerateConfig, greedy: bool = False, **overrides: Any) -> GenerateConfig:
    """`base` (a run's `generate` section) with the non-None overrides; `greedy` means temperature 0.

    Overrides are named like the config fields (top_k, temperature, ...) and validated like them.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if greedy:
        if given.get("temperature", 0) != 0:
            raise ConfigError("--greedy means temperature 0 but --temperature was also given: pass only one of them")
        given["temperature"] = 0.0
    try:
        return GenerateConfig.model_validate(base.model_dump() | given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "settings"
        option = "--" + field.replace("_", "-")
        raise ConfigError(f"{option} {err.get('input')!r}: {err['msg'].lower()}: pass a value in range") from None


# ---- one decoding step ----------------------------------------------------------------------------


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty on the tokens marked in `seen` (B, V): positive logits divided, negative multiplied.

    Dividing a negative logit would raise its probability, so both branches make a seen token less
    likely for penalty > 1.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits (B, V) with everything below the k-th largest of each row set to -inf (ties kept)."""
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Logits (B, V) restricted to the smallest set of most likely tokens whose probability reaches p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token goes when the tokens before it already hold mass p; the most likely one always stays.
    drop_sorted = probs.cumsum(dim=-1) - probs >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(
    logits: torch.Tensor, seen: torch.Tensor, settings: GenerateConfig, generator: torch.Generator
) -> torch.Tensor:
    """One token per row (B,) from last-position logits (B, V): penalty, then greedy or filtered sampling."""
    logits = apply_repetition_penalty(logits.float(), seen, settings.repetition_penalty)
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    if settings.top_k is not None:
        logits = keep_top_k(logits, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1.0:
        logits = keep_top_p(logits, settings.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


# ---- decoding one prompt ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """Generated token IDs of one batch row (the end-of-text token not included) and why it stopped."""

    tokens: list[int]
    stop: StopReason


def decode(
    model: LanguageModel,
    context: Sequence[int],
    settings: GenerateConfig,
    generator: torch.Generator,
    eot_id: int,
    batch: int = 1,
    logit_bias: torch.Tensor | None = None,
) -> tuple[list[Decoded], list[str]]:
    """`batch` continuations of `context` (at most max_seq_len tokens), and notes about the decoding.

    `logit_bias` (V,), the post-hoc article correction, is added to the raw logits before the
    repetition penalty, temperature, top-k and top-p.

    The context is prefilled once; then each step feeds one token through the KV cache. When the
    cache is full the context slides: the cache is rebuilt from the last SLIDE_KEEP of it.
    """
    max_len = model.cfg.max_seq_len
    if not 0 < len(context) <= max_len:
        raise InputError(f"a context of {len(context)} tokens does not fit max_seq_len={max_len}: crop it first")
    device = model_device(model)
    keep = max(1, int(max_len * SLIDE_KEEP))
    start = len(context)
    tokens = torch.empty(batch, start + settings.max_new_tokens, dtype=torch.long, device=device)
    tokens[:, :start] = torch.tensor(list(context), device=device)
    seen = torch.zeros(batch, model.vocab_size, dtype=torch.bool, device=device)
    seen.scatter_(1, tokens[:, :start], True)
    seen[:, eot_id] = False  # an empty prompt starts from end-of-text; that must not penalise stopping
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    notes: list[str] = []
    with torch.inference_mode():
        cache = model.new_cache()
        logits = model(tokens[:, :start], cache)[:, -1]  # (B, V)
        end = start
        for _ in range(settings.max_new_tokens):
            if logit_bias is not None:
                logits = logits + logit_bias
            token = torch.where(done, eot_id, next_tokens(logits, seen, settings, generator))  # (B,)
            tokens[:, end] = token
            end += 1
            done |= token == eot_id
            if bool(done.all()) or end == tokens.size(1):
                break
            seen.scatter_(1, token[:, None], True)
            seen[:, eot_id] = False
            if cache.pos == max_len:
                if not notes:
                    notes.append(
                        f"the text outgrew the model's context of {max_len} tokens: later tokens were "
                        f"generated from the last {keep} tokens only"
                    )
                cache = model.new_cache()
                logits = model(tokens[:, end - keep : end], cache)[:, -1]
            else:
                logits = model(token[:, None], cache)[:, -1]
    rows = []
    for row in tokens[:, start:end].tolist():
        stop: StopReason = "eot" if eot_id in row else "length"
        rows.append(Decoded(row[: row.index(eot_id)] if stop == "eot" else row, stop))
    return rows, notes


# ---- prompts in, samples out -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One generated continuation of one prompt. `continuation` holds generated text only."""

    prompt: str
    continuation: str
    index: int  # which sample of this prompt, from 0
    prompt_tokens: int  # prompt tokens the model saw (after cropping to its context)
    tokens: tuple[int, ...]  # generated IDs, end-of-text not included
    stop: StopReason
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return self.prompt + self.continuation

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "continuation": self.continuation,
            "sample": self.index,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": len(self.tokens),
            "stop": self.stop,
            "warnings": list(self.warnings),
        }


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines are skipped, spaces kept (a trailing space changes the tokens)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--prompts-file {path} does not exist: pass a text file with one prompt per line")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"--prompts-file {path} is not readable UTF-8 text ({exc.__class__.__name__}): pass a text file"
        )
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"--prompts-file {path} holds no prompts: write one prompt per line")
    return prompts


def prompt_seed(seed: int, index: int) -> int:
    """A generator seed for the index-th prompt: independent streams per prompt, same for the same call."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prompt_context(loaded: LoadedModel, prompt: str) -> tuple[list[int], list[str]]:
    """The prompt's tokens cropped to the model's context (with a warning), or end-of-text for ''."""
    ids = loaded.tokenizer.encode(prompt) or [loaded.tokenizer.eot_id]
    max_len = loaded.model.cfg.max_seq_len
    if len(ids) <= max_len:
        return ids, []
    warning = (
        f"prompt {prompt[:30]!r}… is {len(ids)} tokens, longer than the model's context of {max_len}: "
        f"only its last {max_len} tokens were used"
    )
    return ids[-max_len:], [warning]


def generate_samples(
    loaded: LoadedModel,
    prompts: Sequence[str],
    settings: GenerateConfig,
    seed: int,
    progress: Progress | None = None,
    logit_bias: torch.Tensor | None = None,
) -> list[Sample]:
    """`settings.num_samples` continuations of every prompt, prompt by prompt, in order; `logit_bias`
    as `decode` takes it."""
    if not prompts:
        raise InputError("no prompts to generate from: pass --prompt TEXT or a non-empty --prompts-file")
    samples = []
    for i, prompt in enumerate(prompts):
        context, warnings = prompt_context(loaded, prompt)
        generator = torch.Generator(device=loaded.device).manual_seed(prompt_seed(seed, i))
        rows, notes = decode(
            loaded.model, context, settings, generator, loaded.tokenizer.eot_id, settings.num_samples, logit_bias
        )
        for j, row in enumerate(rows):
            samples.append(
                Sample(
                    prompt=prompt,
                    continuation=loaded.tokenizer.decode(row.tokens),
                    index=j,
                    prompt_tokens=len(context),
                    tokens=tuple(row.tokens),
                    stop=row.stop,
                    warnings=tuple(warnings + notes),
                )
            )
        if progress:
            progress(i + 1, len(prompts))
    return samples
