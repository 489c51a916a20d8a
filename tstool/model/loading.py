"""Loading a model for inference: a tstool checkpoint, or any causal LM `transformers` loads.

Either way the result is a `LoadedModel`, whose model answers the one interface analyses use
(`LanguageModel`): DESIGN's one seam for models. The analyses load through `load_any_model`; what
needs tstool's own model (export, experiments) through `load_model`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tstool.config import Config, ModelConfig, from_dict
from tstool.data.tokenizer import TextTokenizer, load_tokenizer
from tstool.errors import CheckpointError
from tstool.model.llama import TinyLlama
from tstool.runs import checkpoint as ckpt
from tstool.runs.run_dir import RunDir


class LanguageModel(Protocol):
    """What analyses ask of a model: `model(idx, cache)` gives logits (B, T, vocab) of tokens idx (B, T)
    at positions cache.pos onwards (0 without a cache), and `new_cache()` an empty cache; `cfg.max_seq_len`
    is the context it is used with. TinyLlama and `hf_models.HFCausalLM` both answer it."""

    cfg: ModelConfig
    vocab_size: int

    def __call__(self, idx: torch.Tensor, cache: Any = None) -> torch.Tensor: ...

    def new_cache(self) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


def model_device(model: LanguageModel) -> torch.device:
    """The device a model's inputs go to: that of its parameters."""
    return next(model.parameters()).device


@dataclass
class LoadedModel:
    model: LanguageModel
    tokenizer: TextTokenizer
    config: Config  # a transformers model's: see `hf_models.analysis_config`
    meta: dict[str, Any]
    path: Path  # the step folder read, even when a run folder (its `latest`) was asked for
    device: torch.device

    @property
    def step(self) -> int:
        """The training step of the checkpoint read: what a reader of a run still training got (0 for a
        transformers model, which tstool did not train)."""
        return int(self.meta["step"])

    @property
    def origin(self) -> str:
        """Where the model comes from: "tstool" (a tstool checkpoint) or "transformers"."""
        return str(self.meta.get("origin", "tstool"))

    def describe(self) -> str:
        """Which model this is, for a status line."""
        if self.origin == "tstool":
            return f"step {self.step} of {self.path}"
        context = self.meta["context"]
        window = f"its {context}-token context" if context else "an unknown context"
        return (
            f"transformers {self.meta['model_type']} model {self.path} "
            f"(used with {self.config.model.max_seq_len} tokens of {window})"
        )


def find_tokenizer(checkpoint_path: Path) -> Path:
    """The run folder's tokenizer.json (checkpoints live in RUN/checkpoints/step-N)."""
    for folder in (checkpoint_path, checkpoint_path.parent, checkpoint_path.parent.parent):
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    raise CheckpointError(f"no tokenizer.json next to {checkpoint_path}: pass --tokenizer with the run's tokenizer")


def is_transformers(path: Path) -> bool:
    """Whether `path` names a transformers model rather than a tstool run or checkpoint: a folder with
    config.json and nothing of tstool's, or, when nothing is at `path`, a hub model id."""
    from tstool.model.hf_models import CONFIG, is_hub_id

    if (path / ckpt.META).exists() or (path / ckpt.CKPT_DIR).exists():
        return False
    if path.is_dir():
        return (path / CONFIG).is_file()
    # a dangling link is a run's `latest` or `best` whose checkpoint was pruned: tstool's to explain
    return not path.exists() and not path.is_symlink() and is_hub_id(str(path))


def load_any_model(path: Path, device: str | torch.device = "cpu", tokenizer: Path | None = None) -> LoadedModel:
    """What the analyses load: a transformers model (`is_transformers`: a folder or hub id, with its own
    tokenizer or `tokenizer`, a folder or hub id), or else a tstool checkpoint (`load_model`)."""
    if not is_transformers(path):
        return load_model(path, device, tokenizer)
    from tstool.model.hf_models import load_transformers

    target = torch.device(device)
    return LoadedModel(*load_transformers(str(path), target, str(tokenizer) if tokenizer else None), target)


def load_model(path: Path, device: str | torch.device = "cpu", tokenizer: Path | None = None) -> LoadedModel:
    """A tstool checkpoint (or a run folder's latest) as an eval-mode model with its own tokenizer.

    A tokenizer given explicitly must be the one the checkpoint was trained with. A run still training
    may prune its `latest` mid-read: the weights and meta still come whole from one step folder.
    """
    loaded = ckpt.load_checkpoint(path)
    config = from_dict(loaded.meta["config"])
    text_tokenizer = load_tokenizer(tokenizer or find_tokenizer(loaded.path))
    RunDir.check_compatible(loaded.meta, config, text_tokenizer)
    model = TinyLlama(config.model, int(loaded.meta["vocab_size"]))
    ckpt.load_weights(model, loaded.weights)
    target = torch.device(device)
    model.to(target).eval()
    return LoadedModel(model, text_tokenizer, config, loaded.meta, loaded.path, target)
