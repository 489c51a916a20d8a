"""A run folder: its resolved config, tokenizer, metrics and checkpoints, and the rules for reusing one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tstool.atomic import write_text
from tstool.config import Config
from tstool.data.tokenizer import TextTokenizer, write_meta
from tstool.errors import CheckpointError, ConfigError
from tstool.runs import checkpoint as ckpt

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every leaf that differs."""
    before, after = _flatten(old), _flatten(new)
    return [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


class RunDir:
    def __init__(self, path: Path):
        self.path = path

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def has_checkpoint(self) -> bool:
        return (self.path / ckpt.CKPT_DIR / "latest").exists()

    def saved_config(self) -> dict[str, Any] | None:
        if not self.config_path.is_file():
            return None
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8"))

    def prepare(self, cfg: Config, tokenizer: TextTokenizer, resume: str | None, overwrite: bool) -> Path | None:
        """Check the folder may be used as asked, touching nothing; return the checkpoint to resume."""
        resume_path = self._resume_path(resume)
        if resume_path is not None:  # before anything in the folder is touched
            self.check_compatible(ckpt.read_meta(resume_path), cfg, tokenizer)
        saved = self.saved_config()
        if resume_path is None and saved is not None and not overwrite:
            differences = config_differences(saved, cfg.to_dict())
            if differences:
                raise ConfigError(
                    f"out-dir {self.path} holds a run with a different config ({'; '.join(differences[:3])}): "
                    "pass --resume auto to continue it, --overwrite to replace it, or another --out-dir"
                )
            if self.has_checkpoint():
                raise ConfigError(
                    f"out-dir {self.path} already holds a trained run: pass --resume auto to continue it, "
                    "--overwrite to replace it, or another --out-dir"
                )
        return resume_path

    def write(self, cfg: Config, tokenizer: TextTokenizer, replace: bool) -> None:
        """Write config and tokenizer; `replace` first deletes the old run's checkpoints and metrics.

        Called only once every input has proved usable, so a failed start leaves the folder as it was.
        The caller holds the folder's lock (tstool.runs.lock), whose file this never deletes.
        """
        if replace:
            shutil.rmtree(self.path / ckpt.CKPT_DIR, ignore_errors=True)
            self.metrics_path.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.config_path, cfg.to_yaml())
        tokenizer.save(self.path)
        write_meta(tokenizer, self.path, tokenizer.source)

    def _resume_path(self, resume: str | None) -> Path | None:
        if resume is None:
            return None
        if resume == "auto":
            return ckpt.resolve_checkpoint(self.path) if self.has_checkpoint() else None
        return ckpt.resolve_checkpoint(Path(resume))

    @staticmethod
    def check_compatible(meta: dict[str, Any], cfg: Config, tokenizer: TextTokenizer) -> None:
        """Refuse to resume with another tokenizer or model shape, saying what differs."""
        if meta["tokenizer_sha256"] != tokenizer.sha256:
            raise CheckpointError(
                f"the checkpoint was trained with tokenizer sha256 {meta['tokenizer_sha256'][:12]}…, "
                f"but the tokenizer in use ({tokenizer.source}) is {tokenizer.sha256[:12]}…: "
                "pass the run's own tokenizer (--tokenizer RUN_DIR) or start a new run"
            )
        # Dropout is a training choice, not part of the shape; everything else must match.
        saved = {k: v for k, v in meta["config"]["model"].items() if k != "dropout"}
        wanted = {k: v for k, v in cfg.model.model_dump(mode="json").items() if k != "dropout"}
        differences = config_differences({"model": saved}, {"model": wanted})
        if differences:
            raise CheckpointError(
                f"the checkpoint's model shape differs from the config ({'; '.join(differences)}): "
                "use the run's config or start a new run"
            )
