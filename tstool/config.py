"""One typed config tree: model, data, articles, training and generation settings.

Precedence, lowest first: preset < config file < first-class CLI options < `--set section.key=value`.
Everything is merged as plain dictionaries and validated once, so every problem is reported together,
one `field.path: message` per line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tstool.errors import ConfigError

CONFIG_VERSION = 1
PRESET_DIR = Path(__file__).resolve().parent / "presets"  # package data, so installed copies have them
DEFAULT_PRESET = "tiny"

ArticleForm = Literal["lower_space", "lower_bare", "cap_space", "cap_bare"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    d_model: int = Field(256, ge=8, description="Width of the residual stream.")
    n_layers: int = Field(4, ge=1, description="Number of transformer blocks.")
    n_heads: int = Field(4, ge=1, description="Attention heads (query heads).")
    n_kv_heads: int | None = Field(
        None, ge=1, description="Key/value heads for grouped-query attention; null means n_heads."
    )
    ffn_hidden: int = Field(688, ge=1, description="SwiGLU hidden size, used exactly as given.")
    max_seq_len: int = Field(256, ge=8, description="Context length; training blocks have this many inputs.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention and residual branches.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head size d_model/n_heads must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def num_params(self, vocab_size: int) -> int:
        """Parameter count of the model this config describes (embedding tied to the head)."""
        kv_dim = self.kv_heads * self.head_dim
        attention = self.d_model * (self.d_model + 2 * kv_dim) + self.d_model * self.d_model
        mlp = 3 * self.d_model * self.ffn_hidden
        block = attention + mlp + 2 * self.d_model
        return vocab_size * self.d_model + self.n_layers * block + self.d_model


class DataConfig(Section):
    files: list[str] = Field(
        default_factory=list,
        description="Local text/.jsonl/.parquet files (.gz allowed); empty with no dataset means the bundled sample.",
    )
    val_files: list[str] = Field(
        default_factory=list, description="Local validation files; empty means hold out val_fraction of `files`."
    )
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="Share of stories held out when no val_files.")
    dataset: str | None = Field(None, description="Hugging Face dataset name or a dataset saved to disk.")
    split: str = Field("train", description="Training split of the Hugging Face dataset.")
    val_split: str = Field("validation", description="Validation split of the Hugging Face dataset.")
    limit: int | None = Field(None, ge=1, description="Use at most this many stories per split.")
    tokenizer: str | None = Field(
        None, description="tokenizer.json, a folder with one, or GPT-2 vocab/merges; null = shipped."
    )
    cache_dir: str | None = Field(None, description="Token cache folder; null = $TSTOOL_CACHE or ~/.cache/tstool.")


class ArticleConfig(Section):
    words: list[str] = Field(default_factory=lambda: ["a", "an", "the"], min_length=1, description="Article words.")
    forms: list[ArticleForm] | None = Field(
        None,
        min_length=1,
        description="Surface forms counted as articles (lower_space, lower_bare, cap_space, cap_bare); "
        "null = every single-token form among lower_space, cap_space and cap_bare (bare lowercase 'a'/'an' "
        "tokens are almost always pieces of longer words, e.g. 'banan'+'a', so they are left out by default).",
    )
    expect_ids: list[int] = Field(default_factory=list, description="IDs a user believes are articles; checked.")
    allow_multi_token: bool = Field(False, description="Allow weighting when an article form is several tokens.")


class TrainConfig(Section):
    article_weight: float = Field(1.0, ge=0.0, le=1000.0, description="Loss weight of article targets (1 = plain CE).")
    logit_adjusted: bool = Field(
        False,
        description="Add log(article_weight) to the article logits inside the loss (the logit-adjusted loss): "
        "articles keep the weight's gradient, but the model is not pushed to over-predict them.",
    )
    batch_size: int = Field(32, ge=1, description="Sequences per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_steps: int = Field(1000, ge=1, description="Optimizer steps; the schedule's length.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(1e-4, ge=0, description="Learning rate at the end of cosine decay.")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.1, ge=0, description="Decay on weight matrices (not norms or embeddings).")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw for everything, or muon for hidden matrices with AdamW for the rest."
    )
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon's Nesterov momentum.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm to this (0 = off).")
    log_interval: int = Field(10, ge=1, description="Steps between metric lines.")
    eval_interval: int = Field(200, ge=1, description="Steps between validation runs.")
    eval_batches: int = Field(20, ge=1, description="Micro-batches per validation run.")
    ckpt_interval: int = Field(200, ge=1, description="Steps between numbered checkpoints.")
    keep_last: int = Field(2, ge=1, description="Numbered checkpoints kept.")
    max_bad_steps: int = Field(5, ge=1, description="Non-finite losses in a row that stop the run.")
    seed: int = Field(1337, description="Seed of initialisation, data order and dropout.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where to train.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast precision.")
    compile: bool = Field(False, description="torch.compile the model.")
    fast_paths: bool = Field(
        True,
        description="Use the device's fast path of the loss where there is one (CUDA: a CUDA graph); same numbers.",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; null = torch's default.")

    @model_validator(mode="after")
    def _check_lr(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class GenerateConfig(Section):
    max_new_tokens: int = Field(200, ge=1, description="Tokens to generate per sample.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature; 0 means greedy.")
    top_k: int | None = Field(None, ge=1, description="Keep the k most likely tokens.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty on tokens already present (1 = off).")
    num_samples: int = Field(1, ge=1, description="Samples per prompt.")


class Config(Section):
    config_version: int = Field(CONFIG_VERSION, description="Version of this config layout.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    articles: ArticleConfig = Field(default_factory=ArticleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load a YAML mapping; Python tags and other non-plain YAML are refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist: check the path or use a preset ({', '.join(list_presets())})"
        )
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise ConfigError(f"config file {path} is not a UTF-8 YAML file ({exc.__class__.__name__}): pass a YAML file")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"config file {path} is not valid plain YAML{line} ({problem}): fix it; Python tags are never loaded"
        )
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model:, train:, ...)")
    return loaded


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}': choose one of {', '.join(list_presets())} or pass a YAML file")
    return path


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _dotted(key: str, value: Any) -> dict[str, Any]:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"bad key '{key}': use section.key=value, e.g. train.lr=3e-4")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def parse_set(assignment: str) -> dict[str, Any]:
    """`train.lr=3e-4` -> {"train": {"lr": 0.0003}}; values are parsed as YAML scalars or lists."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set '{assignment}' has no '=': write section.key=value, e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return _dotted(key.strip(), value)


def _is_file(source: str) -> bool:
    return source.endswith((".yaml", ".yml")) or "/" in source or Path(source).is_file()


def _load_source(source: str) -> dict[str, Any]:
    """A preset name or a YAML file; a file builds on `preset: NAME` (default: the tiny preset)."""
    if not _is_file(source):
        return read_yaml(preset_path(source))
    data = read_yaml(Path(source))
    base = str(data.pop("preset", DEFAULT_PRESET))
    if _is_file(base):
        raise ConfigError(f"config file {source}: `preset:` must name a preset ({', '.join(list_presets())})")
    return _merge(read_yaml(preset_path(base)), data)


def validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            message = (
                "unknown key (check the spelling; see `tstool config show`)"
                if err["type"] == "extra_forbidden"
                else err["msg"]
            )
            lines.append(f"{where}: {message}")
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None


def resolve(
    config: str | None = None,
    options: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> Config:
    """Build the config: preset or file (`config`), then CLI options as dotted keys, then `--set`s."""
    data = _load_source(config or DEFAULT_PRESET)
    for key, value in (options or {}).items():
        if value is not None:
            data = _merge(data, _dotted(key, value))
    for assignment in sets or []:
        data = _merge(data, parse_set(assignment))
    return validate(data)


# Settings that older runs saved and that no longer exist; dropped when such a run is read or resumed.
RETIRED_TRAIN_KEYS = ("fused_loss", "cuda_graph_loss")


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved in a run or checkpoint."""
    train = {k: v for k, v in data.get("train", {}).items() if k not in RETIRED_TRAIN_KEYS}
    return validate({**data, "train": train} if "train" in data else data)
