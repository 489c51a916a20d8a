"""The bad-input matrix of docs/bad-input.md; the table names the test of every row.

A refused input gives one `Error: ...` line that names the problem and the fix, exit 2, no traceback,
and changes nothing: an existing run folder stays byte for byte as it was, a new one is not created.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tstool.config import DataConfig
from tstool.data.corpus import read_bundled
from tstool.data.packing import load_tokens, token_dtype
from tstool.data.tokenizer import EOT, load_tokenizer
from tstool.errors import CheckpointError, TokenizerError
from tstool.runs import checkpoint as ckpt

TRAIN = ["train", "--config", "debug"]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every link's target under `folder`: proof that a failed command changed nothing."""
    found: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for path in (Path(root, name) for name in dirs + files):
            if path.is_symlink():
                found[str(path.relative_to(folder))] = os.readlink(path)
            elif path.is_file():
                found[str(path.relative_to(folder))] = path.read_bytes()
    return found


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared trained debug run (20 steps), free to damage."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run", symlinks=True))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bad data files and tokenizers, made once."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(b"Once upon\x00\x01\x02 a time")
    (folder / "latin1.txt").write_bytes("Once upon a time in a caf\u00e9.".encode("latin-1"))
    (folder / "short.txt").write_text(f"A cat sat.{EOT}A dog ran.{EOT}A bird flew.", encoding="utf-8")
    (folder / "broken.json").write_text("{not json", encoding="utf-8")
    # A byte-level BPE trained with no special tokens at all, so it has no end-of-text token.
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(read_bundled("val")[:300], trainer=trainer)
    backend.save(str(folder / "no_eot.json"))
    # The shipped tokenizer with its last token renumbered past the vocab (and past uint16).
    shipped = json.loads(load_tokenizer().backend.to_str())
    vocab = shipped["model"]["vocab"]
    vocab[max(vocab, key=vocab.get)] = 70_000
    (folder / "gapped.json").write_text(json.dumps(shipped), encoding="utf-8")
    return folder


# ---- train: bad data, tokenizers, articles and devices ----------------------------------------------

# row -> (train arguments, with {inputs} for the bad files, and what the one-line message must hold)
TRAIN_ROWS: dict[str, tuple[list[str], str]] = {
    "missing data file": (["--data", "{inputs}/nope.txt"], "does not exist"),
    "empty data file": (["--data", "{inputs}/empty.txt"], "is empty"),
    "binary data file": (["--data", "{inputs}/binary.txt"], "looks binary"),
    "non-UTF-8 data file": (["--data", "{inputs}/latin1.txt"], "not UTF-8"),
    "fewer tokens than one block": (["--data", "{inputs}/short.txt"], "fewer than one block of 33"),
    "tokenizer.json not JSON": (["--tokenizer", "{inputs}/broken.json"], "not a JSON tokenizer"),
    "tokenizer without end-of-text": (["--tokenizer", "{inputs}/no_eot.json"], f"has no {EOT} token"),
    "token ID past the vocab": (["--tokenizer", "{inputs}/gapped.json"], "token ID 70000"),
    "multi-token article form": (
        ["--article-weight", "3", "--set", "articles.forms=[cap_bare]", "--set", "articles.words=[an]"],
        "--allow-multi-token-articles",
    ),
    "--device cuda without CUDA": (["--device", "cuda"], "no CUDA GPU"),
}


def row_args(row: str, inputs: Path) -> tuple[list[str], str]:
    if row == "--device cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, fragment = TRAIN_ROWS[row]
    return [arg.format(inputs=inputs) for arg in args], fragment


@pytest.mark.parametrize("row", TRAIN_ROWS)
def test_train_refuses_bad_input_before_creating_the_run_folder(cli, user_error, inputs: Path, row: str) -> None:
    args, fragment = row_args(row, inputs)
    user_error(cli(*TRAIN, *args, "--out-dir", "new", "--json"), fragment)
    assert not Path("new").exists()


@pytest.mark.parametrize("mode", [["--resume", "auto"], ["--overwrite"]], ids=" ".join)
@pytest.mark.parametrize("row", TRAIN_ROWS)
def test_train_bad_input_leaves_an_existing_run_as_it_was(
    cli, user_error, inputs: Path, run_copy: Path, row: str, mode: list[str]
) -> None:
    args, _ = row_args(row, inputs)
    before = snapshot(run_copy)
    # No fragment: with --resume the tokenizer check may speak first, which is right too.
    user_error(cli(*TRAIN, *args, "--out-dir", run_copy, *mode, "--json"))
    assert snapshot(run_copy) == before


def test_the_shipped_tokenizer_splits_capitalised_an() -> None:
    """The premise of the multi-token rows, as `tstool diagnose-tokenizer` shows it."""
    tokenizer = load_tokenizer()
    assert len(tokenizer.encode("An")) == 2 and len(tokenizer.encode(" an")) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_multi_token_article_forms_are_left_out_when_allowed(cli_json) -> None:
    forms = ["--set", "articles.forms=[cap_bare,lower_space]", "--set", "articles.words=[an]"]
    cli_json(*TRAIN, "--max-steps", 2, "--article-weight", 3, *forms, "--allow-multi-token-articles")
    meta = ckpt.read_meta(ckpt.resolve_checkpoint(Path("runs/latest")))
    assert meta["article_forms"] == [" an"] and meta["article_ids"] == load_tokenizer().encode(" an")


def test_the_token_cache_widens_to_uint32_past_65536_tokens(tmp_path: Path) -> None:
    """The cache picks its dtype from the vocab: uint16 up to 65,536 tokens, uint32 beyond, and real IDs survive."""
    assert (token_dtype(2**16), token_dtype(2**16 + 1)) == (np.uint16, np.uint32)
    with pytest.raises(TokenizerError, match="uint32"):
        token_dtype(2**32 + 1)
    shipped = json.loads(load_tokenizer().backend.to_str())
    vocab = shipped["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), 2**16 + 10)})
    big = {"id": 2**16 + 10, "content": "<|big|>", "single_word": False, "lstrip": False, "rstrip": False}
    shipped["added_tokens"].append({**big, "normalized": False, "special": True})
    (tmp_path / "big.json").write_text(json.dumps(shipped), encoding="utf-8")
    (tmp_path / "stories.txt").write_text(f"A cat <|big|> sat.{EOT}A dog ran.{EOT}", encoding="utf-8")
    tokenizer = load_tokenizer(tmp_path / "big.json")
    stream = load_tokens(DataConfig(files=[str(tmp_path / "stories.txt")]), "train", tokenizer)
    assert stream.tokens.dtype == np.uint32 and 2**16 + 10 in stream.tokens.tolist()


# ---- damaged, hostile and newer checkpoints ---------------------------------------------------------


def edit_meta(**changes: Any) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        meta = json.loads((folder / ckpt.META).read_text(encoding="utf-8"))
        meta.update(changes)
        (folder / ckpt.META).write_text(json.dumps({k: v for k, v in meta.items() if v is not None}), encoding="utf-8")

    return damage


def drop_a_tensor(folder: Path) -> None:
    weights = load_file(folder / ckpt.WEIGHTS)
    del weights[sorted(weights)[-1]]
    save_file(weights, folder / ckpt.WEIGHTS)


def tear_weights(folder: Path) -> None:
    data = (folder / ckpt.WEIGHTS).read_bytes()
    (folder / ckpt.WEIGHTS).write_bytes(data[: len(data) // 2])


def drop_state_keys(folder: Path) -> None:
    state = torch.load(folder / ckpt.STATE, weights_only=True)
    del state["sampler"], state["rng"]
    torch.save(state, folder / ckpt.STATE)


# row -> (how the latest checkpoint is damaged, what the message must hold, whether generate reads that file)
CHECKPOINT_ROWS: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "meta.json lacking keys": (
        edit_meta(vocab_size=None, tokenizer_sha256=None),
        "lacks tokenizer_sha256, vocab_size",
        True,
    ),
    "checkpoint from a newer tstool": (edit_meta(tstool_version="99.0.0"), "upgrade tstool", True),
    "model.safetensors lacking a tensor": (drop_a_tensor, "do not fit the model", True),
    "model.safetensors torn": (tear_weights, "could not be read", True),
    "state.pt lacking keys": (drop_state_keys, "lacks sampler, rng", False),
}


@pytest.mark.parametrize("command", ["train --resume auto", "generate"])
@pytest.mark.parametrize("row", CHECKPOINT_ROWS)
def test_damaged_or_newer_checkpoints_are_refused(cli, user_error, run_copy: Path, row: str, command: str) -> None:
    damage, fragment, read_by_generate = CHECKPOINT_ROWS[row]
    if command == "generate" and not read_by_generate:
        pytest.skip("generate does not read the training state")
    damage(ckpt.resolve_checkpoint(run_copy))
    before = snapshot(run_copy)
    if command == "generate":
        result = cli("generate", "-c", run_copy, "-p", "Once", "--max-new-tokens", 2, "--json")
    else:
        result = cli(*TRAIN, "--out-dir", run_copy, "--resume", "auto", "--json")
    user_error(result, fragment, "checkpoint")
    assert snapshot(run_copy) == before


class ShellPayload:
    """Unpickling this runs `touch MARKER`: what a hostile state.pt would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_in_state_pt_is_refused_without_running_it(cli, user_error, run_copy: Path) -> None:
    marker = run_copy.parent / "owned"
    state = ckpt.resolve_checkpoint(run_copy) / ckpt.STATE
    torch.save({"step": 20, "payload": ShellPayload(marker)}, state)
    with pytest.raises(CheckpointError, match="could run code"):
        ckpt.load_checkpoint(run_copy, with_state=True)
    user_error(cli(*TRAIN, "--out-dir", run_copy, "--resume", "auto", "--json"), "refusing to load", "state.pt")
    assert not marker.exists()
    torch.load(state, weights_only=False)  # the control: an unsafe load does run it
    assert marker.exists()


@pytest.mark.parametrize("where", ["config file", "--set value"])
def test_python_yaml_tags_are_never_constructed(cli, user_error, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "owned"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    if where == "config file":
        Path("evil.yaml").write_text(f"train:\n  lr: {tag}\n", encoding="utf-8")
        user_error(cli("train", "--config", "evil.yaml", "--json"), "not valid plain YAML")
    else:  # not safe YAML, so the value stays a plain string: here a tokenizer path that does not exist
        user_error(cli(*TRAIN, "--set", f"data.tokenizer={tag}", "--json"), "does not exist")
    assert not marker.exists() and not Path("runs").exists()
    yaml.unsafe_load(tag)  # the control: an unsafe loader does run it
    assert marker.exists()


# ---- saving onto a full disk ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("point", ["save:weights", "save:before-rename", "save:before-link"])
def test_a_disk_filling_at_any_save_point_keeps_the_previous_checkpoint(
    cli, cli_json, monkeypatch: pytest.MonkeyPatch, run_copy: Path, point: str
) -> None:
    """test_train.py covers save:state; a full disk at the other points must fail as cleanly."""
    previous = ckpt.resolve_checkpoint(run_copy)
    kept = snapshot(previous)
    resume = [*TRAIN, "--max-steps", 30, "--out-dir", run_copy, "--resume", "auto"]
    monkeypatch.setenv("TSTOOL_FAULT", f"{point}:enospc")
    result = cli(*resume, "--json")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    [message] = result.stderr.strip().splitlines()
    assert message.startswith("Error: saving the step 30 checkpoint failed (No space left")
    assert f"{previous} is intact" in message and "--resume auto" in message
    assert ckpt.resolve_checkpoint(run_copy) == previous and snapshot(previous) == kept
    monkeypatch.delenv("TSTOOL_FAULT")
    assert cli_json(*resume)["step"] == 30
    assert not list((run_copy / ckpt.CKPT_DIR).glob(".*"))  # nothing half-written left behind


# ---- generate: the one row that is not an error -------------------------------------------------------


def test_a_prompt_longer_than_the_context_is_cropped_with_a_warning(cli_json, tiny_run: Path) -> None:
    out = cli_json("generate", "-c", tiny_run, "-p", "The dog ran to the park. " * 20, "--max-new-tokens", 2)
    assert [s["prompt_tokens"] for s in out["samples"]] == [32]
    assert "longer than the model's context of 32" in out["warnings"][0]


def test_generate_with_cuda_asked_for_but_absent(cli, user_error, tiny_run: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    user_error(cli("generate", "-c", tiny_run, "--device", "cuda", "--max-new-tokens", 2), "no CUDA GPU")
