"""Hugging Face interop: export parity with transformers, the tokenizer files, and --init-from."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tstool.config import CONFIG_VERSION, resolve
from tstool.data.tokenizer import EOT, load_tokenizer
from tstool.errors import CheckpointError
from tstool.model.hf_export import check_hf_folder, hf_config
from tstool.model.llama import TinyLlama, hf_state_dict
from tstool.model.loading import load_model
from tstool.runs import checkpoint as ckpt
from tstool.runs.metrics_log import read_metrics
from tstool.training.trainer import RunOptions, Trainer, train

transformers = pytest.importorskip("transformers")
DEBUG = ["--config", "debug", "--no-live"]


def export(cli_json, checkpoint: Path, out: Path) -> Path:
    document = cli_json("export-hf", "--checkpoint", checkpoint, "--out", out)
    assert Path(document["out"]) == out
    return out


def load_hf(folder: Path) -> torch.nn.Module:
    model, info = transformers.LlamaForCausalLM.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    return model.eval()


@pytest.fixture
def gqa_run(tmp_path: Path) -> Path:
    """A run folder holding one checkpoint of a grouped-query model with large random weights."""
    cfg = resolve("debug", {"model.n_kv_heads": 1})
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    model = TinyLlama(cfg.model, tokenizer.vocab_size)
    with torch.no_grad():
        for param in model.parameters():  # far from init, so that parity is not trivially near zero
            param.normal_(0.0, 0.3)
    run = tmp_path / "gqa"
    tokenizer.save(run)
    meta = {
        "config": cfg.to_dict(),
        "config_version": CONFIG_VERSION,
        "tokenizer_sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
    }
    ckpt.save_checkpoint(run, 0, ckpt.model_weights(model), {}, meta)
    return run


@pytest.mark.parametrize("run", ["tiny_run", "gqa_run"])
def test_exported_model_gives_tstool_logits_in_transformers(run: str, request, cli_json, tmp_path: Path) -> None:
    source = request.getfixturevalue(run)
    folder = export(cli_json, source, tmp_path / "hf")
    ours = load_model(source).model
    theirs = load_hf(folder)
    assert theirs.config.num_key_value_heads == ours.cfg.kv_heads
    assert theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()  # tied
    idx = torch.randint(0, ours.vocab_size, (2, ours.cfg.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ours(idx), theirs(idx).logits
    assert got.dtype == torch.float32
    assert (expected - got).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 1.0  # the logits are far from zero: the comparison means something


def test_export_writes_a_complete_folder_with_the_head_stored_once(tiny_run: Path, cli_json, tmp_path: Path) -> None:
    folder = export(cli_json, tiny_run, tmp_path / "hf")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not list(tmp_path.glob(".hf.*"))  # no temporary folder left
    loaded = load_model(tiny_run)
    config = json.loads((folder / "config.json").read_text())
    eot = loaded.tokenizer.eot_id
    assert config == hf_config(loaded.model.cfg, loaded.tokenizer.vocab_size, eot)
    assert config["tie_word_embeddings"] is True and config["torch_dtype"] == "float32"
    assert config["intermediate_size"] == loaded.config.model.ffn_hidden
    assert (config["bos_token_id"], config["eos_token_id"]) == (eot, eot)
    weights = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in weights
    assert set(weights) == set(hf_state_dict(loaded.model)) - {"lm_head.weight"}


def test_exported_tokenizer_loads_as_fast_tokenizer_with_eos(tiny_run: Path, cli_json, tmp_path: Path) -> None:
    folder = export(cli_json, tiny_run, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ours = load_tokenizer(tiny_run)
    assert isinstance(hf_tok, transformers.PreTrainedTokenizerFast)
    assert hf_tok.eos_token == hf_tok.bos_token == EOT
    assert hf_tok.eos_token_id == hf_tok.bos_token_id == ours.eot_id
    text = "Once upon a time, the little dog saw an owl.<|endoftext|>The end"
    assert hf_tok(text)["input_ids"] == hf_tok.encode(text) == ours.encode(text)
    assert hf_tok.decode(ours.encode(text)) == text


def test_export_refuses_a_non_empty_out_without_overwrite(
    tiny_run: Path, cli, cli_json, user_error, tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    user_error(cli("export-hf", "--checkpoint", tiny_run, "--out", out), "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    cli_json("export-hf", "--checkpoint", tiny_run, "--out", out, "--overwrite")
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


@pytest.fixture
def exported(tiny_run: Path, cli_json, tmp_path: Path) -> Path:
    return export(cli_json, tiny_run, tmp_path / "hf")


@pytest.fixture(scope="module")
def longer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug run trained for 80 steps (4 s): far enough below ln(V) to tell trained from fresh."""
    root = tmp_path_factory.mktemp("longer_run")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TSTOOL_CACHE", str(root / "cache"))
        train(resolve("debug", {"train.threads": 1, "train.max_steps": 80}), RunOptions(out_dir=root / "run"))
    torch.set_num_threads(threads)
    return root / "run"


@pytest.mark.slow
def test_init_from_round_trips_the_exported_weights_and_loss(longer_run: Path, cli_json, tmp_path: Path) -> None:
    exported = export(cli_json, longer_run, tmp_path / "hf")
    cfg = resolve("debug", {"train.max_steps": 1, "train.log_interval": 1})
    trainer = Trainer(cfg, RunOptions(out_dir=tmp_path / "run", init_from=exported), lambda event: None)
    saved = load_file(exported / "model.safetensors")
    loaded = hf_state_dict(trainer.model)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.items())
    # The first step's loss is the exported model's loss on that batch, computed here by transformers.
    x, y = copy.deepcopy(trainer.sampler).next_batch(trainer.train_tokens.tokens)
    with torch.no_grad():
        logits = load_hf(exported)(x).logits
    expected = F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    trainer.run()
    first = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("step") == 1 and "split" not in r)
    assert first["loss_unweighted"] == pytest.approx(expected, abs=1e-4)
    assert expected < math.log(trainer.tokenizer.vocab_size) - 1.0  # trained, not a fresh model


def test_init_from_refuses_another_shape(exported: Path, cli, user_error) -> None:
    result = cli("train", *DEBUG, "--out-dir", "run", "--init-from", exported, "--set", "model.d_model=64")
    user_error(result, "model.d_model: 32 -> 64 (hidden_size)")
    assert not Path("run").exists()  # refused before the run folder was touched


def test_init_from_refuses_another_tokenizer(exported: Path, cli, user_error) -> None:
    spec = json.loads((exported / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    first, second = list(vocab)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same size, different tokenizer
    (exported / "tokenizer.json").write_text(json.dumps(spec))
    result = cli("train", *DEBUG, "--out-dir", "run", "--init-from", exported)
    user_error(result, "tokenizer sha256")


def test_init_from_needs_a_llama_folder(cli, user_error, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    user_error(cli("train", *DEBUG, "--out-dir", "run", "--init-from", tmp_path / "empty"), "config.json")


def test_init_from_accepts_a_shorter_context_but_not_a_longer_one(exported: Path) -> None:
    tokenizer = load_tokenizer()
    check_hf_folder(exported, resolve("debug", {"model.max_seq_len": 16}).model, tokenizer)
    with pytest.raises(CheckpointError, match=r"model.max_seq_len: 32 -> 64 \(max_position_embeddings\)"):
        check_hf_folder(exported, resolve("debug", {"model.max_seq_len": 64}).model, tokenizer)


def test_transformers_generate_on_the_export_samples_the_corrected_distribution(
    eval_runs, cli_json, tmp_path: Path
) -> None:
    """The correction travels in generation_config.json: generate()'s processed scores are tstool's raw
    logits lowered by tau * log w at the article IDs, and a weight-1 export carries none."""
    from tstool.analysis.calibration import correction_bias, weight_table_of

    weighted = eval_runs("weighted")  # article weight 3
    document = cli_json("export-hf", "--checkpoint", weighted, "--out", tmp_path / "hf", "--correction", "0.8")
    assert document["correction"]["tau"] == 0.8 and document["sequence_bias"]
    loaded = load_model(weighted)
    theirs = load_hf(tmp_path / "hf")
    prompt = torch.tensor([loaded.tokenizer.encode("Once upon a time there was")])
    with torch.no_grad():
        scores = theirs.generate(
            prompt, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
        ).scores[0]
        expected = loaded.model(prompt)[:, -1] + correction_bias(weight_table_of(loaded), 0.8)
    assert (scores - expected).abs().max().item() <= 1e-4
    article_ids = [pair[0][0] for pair in document["sequence_bias"]]
    assert sorted(article_ids) == sorted(i for i, w in enumerate(weight_table_of(loaded).tolist()) if w != 1.0)
    plain = cli_json("export-hf", "--checkpoint", eval_runs("base"), "--out", tmp_path / "plain")
    assert plain["sequence_bias"] == [] and "sequence_bias" not in json.loads(
        (tmp_path / "plain" / "generation_config.json").read_text()
    )
