"""Interop with Hugging Face `transformers`: export a checkpoint as a Llama folder, and start from one.

An exported folder holds what `LlamaForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
read: config.json, generation_config.json, model.safetensors (HF tensor names; the tied head stored
once, as `save_pretrained` stores it), tokenizer.json, tokenizer_config.json, special_tokens_map.json.
Nothing here imports `transformers`: the format is plain JSON and safetensors, so exporting works
without it installed, and config.json spells its keys so that transformers 4 and 5 both read it.

Starting from a folder (`tstool train --init-from`) reads it back: the shape must equal the run's
model config and tokenizer.json must be the tokenizer in use (same sha256), and the weights are
loaded into the fused projections (q/k/v rows and gate/up rows) through `hf_state_dict`'s mapping.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tstool.config import ModelConfig
from tstool.data.tokenizer import EOT, TextTokenizer, load_tokenizer
from tstool.errors import CheckpointError, ConfigError, TokenizerError
from tstool.model.llama import TinyLlama, hf_state_dict
from tstool.model.loading import LoadedModel, load_model
from tstool.runs.run_dir import config_differences

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
TIED_HEAD = "lm_head.weight"
# tstool ModelConfig field -> the LlamaConfig key that holds it (for reading and for error messages)
HF_KEYS = {
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "ffn_hidden": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
    "rope_theta": "rope_theta",
    "norm_eps": "rms_norm_eps",
}


@dataclass(frozen=True)
class HFExport:
    """What `export_hf` wrote."""

    path: Path
    checkpoint: Path
    step: int | None
    files: list[str]
    config: dict[str, Any]
    sequence_bias: list[list[Any]]  # the correction generate() applies: [[token_id], bias] pairs; [] for none


# ---- export ----------------------------------------------------------------------------------------


def hf_config(cfg: ModelConfig, vocab_size: int, eot_id: int) -> dict[str, Any]:
    """config.json of a `LlamaForCausalLM` with the shape of `cfg`; <|endoftext|> is both BOS and EOS."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def sequence_bias(logit_bias: torch.Tensor | None) -> list[list[Any]]:
    """A logit bias (V,) as `GenerationConfig.sequence_bias`: [[token_id], bias] for each biased token.
    generate() applies it to the raw logits before repetition penalty, temperature, top-k and top-p,
    as tstool's sampler applies the correction."""
    if logit_bias is None:
        return []
    return [[[int(i)], float(logit_bias[i])] for i in logit_bias.nonzero().squeeze(1).tolist()]


def _companion_files(tokenizer: TextTokenizer, max_len: int, bias: list[list[Any]]) -> dict[str, dict[str, Any]]:
    """JSON files beside tokenizer.json: a PreTrainedTokenizerFast with EOS/BOS set, and generation
    defaults, with the post-hoc article correction as a sequence bias when there is one."""
    special = {"bos_token": EOT, "eos_token": EOT}
    return {
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,  # tstool never prepends BOS; EOS separates stories
        },
        "special_tokens_map.json": special,
        "generation_config.json": {
            "bos_token_id": tokenizer.eot_id,
            "eos_token_id": tokenizer.eot_id,
            "pad_token_id": tokenizer.eot_id,  # batch-1 generate() needs no padding but warns without one
            **({"sequence_bias": bias} if bias else {}),
        },
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Fail before any work when `out` may not be written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} is a folder that is not empty: pass --overwrite to replace it or another --out")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`; an old `out` is moved aside first and deleted only after."""
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def write_hf_folder(
    model: TinyLlama,
    tokenizer: TextTokenizer,
    out: Path,
    overwrite: bool = False,
    bias: list[list[Any]] | None = None,
) -> list[str]:
    """Write `model` and `tokenizer` as a Hugging Face Llama folder at `out`, atomically, with `bias`
    (`sequence_bias`) in its generation config; returns the file names."""
    check_out_dir(out, overwrite)
    # The head is the embedding: stored once under the embedding's name, as save_pretrained does.
    weights = {name: t.cpu() for name, t in hf_state_dict(model).items() if name != TIED_HEAD}
    target = out.resolve()  # a name to put the temporary folder beside, even for "."
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        _write_json(tmp / CONFIG, hf_config(model.cfg, model.vocab_size, tokenizer.eot_id))
        tokenizer.save(tmp)
        for name, data in _companion_files(tokenizer, model.cfg.max_seq_len, bias or []).items():
            _write_json(tmp / name, data)
        files = sorted(p.name for p in tmp.iterdir())
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def export_hf(
    checkpoint: Path,
    out: Path,
    overwrite: bool = False,
    tokenizer: Path | None = None,
    correction: Callable[[LoadedModel], torch.Tensor | None] = lambda loaded: None,
) -> HFExport:
    """Write a checkpoint (or a run folder's latest) as a Hugging Face Llama folder at `out`, with the
    logit bias that `correction` gives the loaded model (the post-hoc article correction) carried in
    its generation config."""
    check_out_dir(out, overwrite)  # before loading anything
    loaded = load_model(checkpoint, "cpu", tokenizer)
    bias = sequence_bias(correction(loaded))
    files = write_hf_folder(loaded.model, loaded.tokenizer, out, overwrite, bias)
    step = loaded.meta.get("step")
    return HFExport(
        path=out,
        checkpoint=loaded.path,
        step=int(step) if step is not None else None,
        files=files,
        config=hf_config(loaded.model.cfg, loaded.model.vocab_size, loaded.tokenizer.eot_id),
        sequence_bias=bias,
    )


# ---- starting from a Hugging Face folder -----------------------------------------------------------


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not folder.is_dir():
        raise CheckpointError(f"--init-from {folder} is not a folder: pass a local Hugging Face Llama folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"--init-from {folder} holds no {CONFIG}: pass a Hugging Face Llama folder")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc.__class__.__name__}): the folder is damaged")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "llama":
        raise CheckpointError(f"{path} is not a Llama config (model_type {model_type!r}): only Llama folders load")
    return config


def _unsupported(config: dict[str, Any], cfg: ModelConfig) -> list[str]:
    """Llama options tstool's model does not have, as `key: value` for a message."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    checks = {
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "attention_bias": (config.get("attention_bias", False), False),
        "mlp_bias": (config.get("mlp_bias", False), False),
        "tie_word_embeddings": (config.get("tie_word_embeddings", True), True),
        "head_dim": (config.get("head_dim") or cfg.head_dim, cfg.head_dim),
        "rope_type": (rope.get("rope_type", rope.get("type", "default")), "default"),
    }
    return [f"{key}: {found!r} (tstool needs {wanted!r})" for key, (found, wanted) in checks.items() if found != wanted]


def check_hf_folder(folder: Path, cfg: ModelConfig, tokenizer: TextTokenizer) -> dict[str, Any]:
    """The folder's config.json, after checking it fits `cfg` and `tokenizer`; raises naming the mismatch."""
    config = read_hf_config(folder)
    rope = config.get("rope_parameters") or {}
    found = {field: config.get(key) for field, key in HF_KEYS.items()}
    found["rope_theta"] = config.get("rope_theta", rope.get("rope_theta", 10000.0))
    found["n_kv_heads"] = found["n_kv_heads"] or found["n_heads"]
    if isinstance(found["max_seq_len"], int) and cfg.max_seq_len <= found["max_seq_len"]:
        found["max_seq_len"] = cfg.max_seq_len  # RoPE has no table to fit: training on shorter blocks is fine
    wanted = cfg.model_dump(include=set(HF_KEYS)) | {"n_kv_heads": cfg.kv_heads}
    shape = [
        f"{line} ({HF_KEYS[line.split(':')[0].removeprefix('model.')]})"
        for line in config_differences({"model": found}, {"model": wanted})
    ]
    if config.get("vocab_size") != tokenizer.vocab_size:
        shape.append(f"vocab_size: {config.get('vocab_size')!r} -> {tokenizer.vocab_size!r} (the tokenizer's)")
    problems = shape + _unsupported(config, cfg)
    if problems:
        raise CheckpointError(
            f"--init-from {folder} does not fit the run's model (HF -> run: {'; '.join(problems)}): "
            "set the model config to its shape"
        )
    if not (folder / TOKENIZER).is_file():
        raise TokenizerError(f"--init-from {folder} holds no {TOKENIZER}: tstool needs it to check the tokenizer")
    theirs = load_tokenizer(folder / TOKENIZER)
    if theirs.sha256 != tokenizer.sha256:
        raise TokenizerError(
            f"--init-from {folder} was trained with tokenizer sha256 {theirs.sha256[:12]}…, but the tokenizer in use "
            f"({tokenizer.source}) is {tokenizer.sha256[:12]}…: pass --tokenizer {folder / TOKENIZER}"
        )
    return config


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index} is unreadable ({exc.__class__.__name__}): the folder is damaged")
        return [folder / name for name in sorted(set(shards))]
    raise CheckpointError(
        f"--init-from {folder} holds no {WEIGHTS} (or {WEIGHTS_INDEX}): only safetensors weights load, "
        "never pickled .bin files"
    )


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder's safetensors file(s), by HF name."""
    weights: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as handle:
                weights |= {name: handle.get_tensor(name) for name in handle.keys()}
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{path} could not be read ({exc}): the folder is damaged")
    return weights


@torch.no_grad()
def load_hf_weights(model: TinyLlama, folder: Path) -> None:
    """Copy the folder's weights into `model` (its shape already checked by `check_hf_folder`).

    `hf_state_dict` gives, under HF names, row slices that share storage with the model's fused
    parameters, so copying into them fills q/k/v and gate/up in place: one mapping, in model.py.
    """
    weights = read_hf_weights(folder)
    targets = hf_state_dict(model)
    wanted = set(targets) - {TIED_HEAD}
    missing, unexpected = sorted(wanted - set(weights)), sorted(set(weights) - set(targets))
    if missing or unexpected:
        names = [f"missing {n}" for n in missing] + [f"unexpected {n}" for n in unexpected]
        raise CheckpointError(f"{folder}: weights do not fit the model ({', '.join(names[:4])}): the folder is damaged")
    if TIED_HEAD in weights and not torch.equal(weights[TIED_HEAD], weights["model.embed_tokens.weight"]):
        raise CheckpointError(f"{folder}: lm_head differs from the embedding, but tstool ties them: it cannot load")
    for name in wanted:
        if weights[name].shape != targets[name].shape:
            raise CheckpointError(
                f"{folder}: {name} has shape {tuple(weights[name].shape)}, the model needs {tuple(targets[name].shape)}"
            )
        targets[name].copy_(weights[name])
    # Guards the shared-storage assumption above: a copy that missed the model would show here.
    reloaded = hf_state_dict(model)
    if not all(torch.equal(reloaded[name], weights[name].to(reloaded[name])) for name in wanted):
        raise RuntimeError("hf_state_dict no longer returns views of the model's parameters: loading failed")
