"""Loading a trained model for inference: weights, config and tokenizer from one checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tstool.config import Config, from_dict
from tstool.data.tokenizer import TextTokenizer, load_tokenizer
from tstool.errors import CheckpointError
from tstool.model.llama import TinyLlama
from tstool.runs import checkpoint as ckpt
from tstool.runs.run_dir import RunDir


@dataclass
class LoadedModel:
    model: TinyLlama
    tokenizer: TextTokenizer
    config: Config
    meta: dict[str, Any]
    path: Path  # the step folder read, even when a run folder (its `latest`) was asked for
    device: torch.device

    @property
    def step(self) -> int:
        """The training step of the checkpoint read: what a reader of a run still training got."""
        return int(self.meta["step"])


def find_tokenizer(checkpoint_path: Path) -> Path:
    """The run folder's tokenizer.json (checkpoints live in RUN/checkpoints/step-N)."""
    for folder in (checkpoint_path, checkpoint_path.parent, checkpoint_path.parent.parent):
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    raise CheckpointError(f"no tokenizer.json next to {checkpoint_path}: pass --tokenizer with the run's tokenizer")


def load_model(path: Path, device: str | torch.device = "cpu", tokenizer: Path | None = None) -> LoadedModel:
    """A checkpoint (or a run folder's latest) as an eval-mode model with its own tokenizer.

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
