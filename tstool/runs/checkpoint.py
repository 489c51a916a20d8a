"""Self-describing checkpoints, written atomically, loaded without unpickling code.

Layout of a run directory:
    config.yaml, tokenizer.json, tokenizer_meta.json, metrics.jsonl
    checkpoints/step-000200/{model.safetensors, state.pt, meta.json}
    checkpoints/latest -> step-000200   (relative symlinks, switched atomically)
    checkpoints/best   -> step-000200   (lowest validation unweighted loss)

A checkpoint folder is written under a temporary name and renamed into place, and the `latest` and
`best` links are replaced with one atomic rename, so a crash at any point leaves the previous
checkpoint whole and pointed to.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tstool import __version__
from tstool.errors import CheckpointError
from tstool.faults import fault_point

WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
CKPT_DIR = "checkpoints"
REQUIRED_META = ("config", "tokenizer_sha256", "vocab_size", "step", "tstool_version", "config_version")
REQUIRED_STATE = ("optimizer", "scaler", "step", "sampler", "rng", "best_val", "bad_steps")


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any] | None


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (safetensors refuses shared storage)."""
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            weights[name] = tensor
    return weights


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load saved weights; only tied tensors may be absent, anything else missing is a damaged checkpoint."""
    tied = set(model.state_dict()) - set(model_weights(model))
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit the model ({str(exc).splitlines()[-1].strip()})")
    problems = sorted(set(missing) - tied) + sorted(unexpected)
    if problems:
        raise CheckpointError(
            f"the checkpoint's weights do not fit the model ({', '.join(problems[:4])}): "
            "it is damaged or from another model shape"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def point_link(link: Path, target_name: str) -> None:
    """Atomically make `link` a relative symlink to the sibling `target_name`."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def step_dir_name(step: int) -> str:
    """The folder name of step `step`'s checkpoint."""
    return f"step-{step:07d}"


def save_checkpoint(
    run_dir: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Write checkpoints/step-N atomically and point `latest` at it. Returns the folder."""
    ckpt_root = run_dir / CKPT_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS))
        fault_point("save:weights")
        with open(tmp / STATE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("save:state")
        _write_json(tmp / META, {**meta, "step": step, "tstool_version": __version__})
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("save:before-rename")
    if final.exists():  # the same step saved again (e.g. interrupted right after a checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    fault_point("save:before-link")
    point_link(ckpt_root / "latest", name)
    return final


def mark_best(run_dir: Path, checkpoint: Path) -> None:
    point_link(run_dir / CKPT_DIR / "best", checkpoint.name)


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete numbered checkpoints beyond the newest `keep_last`, never those latest/best point to."""
    ckpt_root = run_dir / CKPT_DIR
    protected = {(ckpt_root / link).resolve() for link in ("latest", "best") if (ckpt_root / link).is_symlink()}
    numbered = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    removed = []
    for path in numbered[:-keep_last]:
        if path.resolve() not in protected:
            shutil.rmtree(path)
            removed.append(path)
    for stale in ckpt_root.glob(".step-*.tmp"):  # left by a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)
    for stale in [*ckpt_root.glob(".latest.*.tmp"), *ckpt_root.glob(".best.*.tmp")]:  # a crash mid-switch
        stale.unlink(missing_ok=True)
    return removed


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder (its `latest` checkpoint)."""
    if (path / META).is_file():
        return path
    latest = path / CKPT_DIR / "latest"
    if (latest / META).is_file():
        return latest.resolve()
    if path.exists():
        raise CheckpointError(
            f"{path} holds no checkpoint (no {META} and no {CKPT_DIR}/latest): pass a run or checkpoint folder"
        )
    raise CheckpointError(f"checkpoint {path} does not exist: pass a run folder or a checkpoint folder")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / META} is unreadable ({exc.__class__.__name__}): the checkpoint is damaged")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META} is not a JSON object: the checkpoint is damaged")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CheckpointError(f"{path / META} lacks {', '.join(missing)}: the checkpoint is damaged or not from tstool")
    if _version_tuple(str(meta["tstool_version"])) > _version_tuple(__version__):
        raise CheckpointError(
            f"{path} was written by tstool {meta['tstool_version']}, "
            f"newer than this tstool {__version__}: upgrade tstool"
        )
    return meta


def load_checkpoint(path: Path, with_state: bool = False) -> Checkpoint:
    """Load weights (safetensors) and optionally the training state (tensors and plain data only)."""
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    try:
        weights = load_file(str(path / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path / WEIGHTS} could not be read ({exc}): the checkpoint is damaged")
    state = None
    if with_state:
        try:
            state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{path / STATE} holds objects other than tensors and plain data; refusing to load it "
                "(it could run code): use a checkpoint written by tstool"
            )
        except (OSError, RuntimeError, EOFError) as exc:
            raise CheckpointError(
                f"{path / STATE} could not be read ({str(exc).splitlines()[0]}): the checkpoint is damaged"
            )
        missing = (
            [key for key in REQUIRED_STATE if key not in state] if isinstance(state, dict) else list(REQUIRED_STATE)
        )
        if missing:
            raise CheckpointError(
                f"{path / STATE} lacks {', '.join(missing)}: the checkpoint is damaged or not from tstool; "
                "resume from another checkpoint or start a new run"
            )
    return Checkpoint(path=path, meta=meta, weights=weights, state=state)
