"""Any causal LM that transformers loads, diagnosed like a tstool run: tiny GPT-2, GPT-Neo and Llama models
built from transformers configs with local tokenizers (tstool's shipped one as a fast tokenizer, the real
GPT-2 files, a SentencePiece tokenizer trained here), never the network."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tstool.analysis.compare import ROWS
from tstool.analysis.probes import SHIFT_MARGIN
from tstool.config import ArticleConfig, DataConfig
from tstool.data.articles import ALL_FORMS, form_ids, resolve_articles
from tstool.data.corpus import read_bundled
from tstool.data.packing import load_tokens
from tstool.data.tokenizer import EOT, load_tokenizer
from tstool.model.hf_models import EVAL_CONTEXT, HFCausalLM, analysis_config, load_hf_tokenizer
from tstool.model.loading import is_transformers, load_any_model

transformers = pytest.importorskip("transformers")

CONTEXT = 32  # the models' context, and the training blocks: GPT-2 and GPT-Neo learn each position's embedding
ARCHITECTURES = ("gpt2", "gpt_neo", "llama")
SMALL_COMPARE = ("--samples", 1, "--max-new-tokens", 16, "--max-blocks", 8)


def hf_config(arch: str, vocab_size: int, eos_id: int) -> transformers.PretrainedConfig:
    """A two-layer model of width 32 with a 32-token context."""
    common = {"vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id}
    if arch == "gpt2":
        return transformers.GPT2Config(n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2, **common)
    if arch == "gpt_neo":
        return transformers.GPTNeoConfig(
            max_position_embeddings=CONTEXT,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            attention_types=[[["global", "local"], 1]],
            window_size=16,
            **common,
        )
    return transformers.LlamaConfig(
        max_position_embeddings=CONTEXT,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        **common,
    )


def shipped_as_fast_tokenizer(folder: Path) -> Path:
    """tstool's shipped tokenizer saved as a transformers PreTrainedTokenizerFast."""
    backend = load_tokenizer().backend
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT, bos_token=EOT).save_pretrained(folder)
    return folder


def sentencepiece_tokenizer(folder: Path) -> Path:
    """A Llama-style tokenizer: SentencePiece BPE trained on bundled stories, wrapped as LlamaTokenizerFast."""
    from tokenizers import SentencePieceBPETokenizer

    trained = SentencePieceBPETokenizer()
    trained.train_from_iterator(
        read_bundled("train")[:2000], vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    model = json.loads(trained._tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    transformers.LlamaTokenizerFast(vocab=model["vocab"], merges=merges).save_pretrained(folder)
    return folder


def build_model(arch: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """An untrained model of `arch` saved with save_pretrained, its tokenizer files beside it."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(arch, len(tok), tok.eos_token_id))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizers_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_tokenizers")
    return {"shipped": shipped_as_fast_tokenizer(root / "shipped"), "sp": sentencepiece_tokenizer(root / "sp")}


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory: pytest.TempPathFactory, tokenizers_dir: dict[str, Path]) -> dict[str, Path]:
    """Untrained GPT-2 and GPT-Neo with the shipped tokenizer, and Llama with the SentencePiece one."""
    root = tmp_path_factory.mktemp("hf_models")
    return {
        arch: build_model(arch, tokenizers_dir["sp" if arch == "llama" else "shipped"], root / arch)
        for arch in ARCHITECTURES
    }


def copy_model(source: Path, target: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*drop))
    return target


# ---- tokenizers ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpt2_articles_resolve_to_the_real_ids_from_slow_files_too(gpt2_dir: Path, tmp_path: Path) -> None:
    """The GPT-2 vocab.json + merges.txt as a transformers tokenizer (the files of a slow tokenizer, which
    transformers converts): " a" is 257 and " the" 262, as tstool's own reading of the same files says."""
    folder = copy_model(gpt2_dir, tmp_path / "gpt2-tokenizer", drop=("SOURCE.md",))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    hf, own = load_hf_tokenizer(str(folder)), load_tokenizer(gpt2_dir)
    forms = {f.text: f.ids for f in resolve_articles(hf, ArticleConfig()).forms}
    assert (forms[" a"], forms[" the"], forms[" an"]) == ((257,), (262,), (281,))
    assert hf.eot_id == own.eot_id == 50256 and hf.vocab_size == own.vocab_size == 50257
    every = ArticleConfig(forms=list(ALL_FORMS))
    assert resolve_articles(hf, every).forms == resolve_articles(own, every).forms
    # byte-level BPE encodes a form the same alone and mid-sentence: tstool's resolution is unchanged
    for f in resolve_articles(load_tokenizer(), every).forms:
        assert f.ids == tuple(load_tokenizer().encode(f.text))


def test_sentencepiece_articles_are_the_pieces_used_mid_sentence(tokenizers_dir: dict[str, Path]) -> None:
    tok = load_hf_tokenizer(str(tokenizers_dir["sp"]))
    piece = tok.backend.token_to_id("▁a")
    assert form_ids(tok, " a") == (piece,)
    assert tok.encode("Once upon a time")[2] == piece  # what the tokenizer really produces mid-sentence
    forms = {f.text: f for f in resolve_articles(tok, ArticleConfig()).forms}
    assert forms[" a"].ids == (piece,) and forms[" the"].ids == (tok.backend.token_to_id("▁the"),)
    # a continuation decodes with the space that starts it, so it does not glue onto its prompt
    assert tok.decode([piece, tok.backend.token_to_id("▁dog")]) == " a dog" and tok.token(piece) == " a"
    assert tok.eot_id == tok.backend.token_to_id("</s>")


def test_diagnose_tokenizer_takes_a_transformers_folder_or_hub_id(
    tokenizers_dir: dict[str, Path], cli_json: Callable, cli: Callable, user_error: Callable, fake_hub: Callable
) -> None:
    doc = cli_json("diagnose-tokenizer", "--tokenizer", tokenizers_dir["sp"], "--no-corpus")
    assert doc["ok"] and any(a["token"] == " a" for a in doc["article_ids"])
    model_id = fake_hub(tokenizers_dir["shipped"])
    shipped = cli_json("diagnose-tokenizer", "--tokenizer", model_id, "--no-corpus")
    assert [a["id"] for a in shipped["article_ids"]] == resolve_articles(load_tokenizer(), ArticleConfig()).ids
    user_error(cli("diagnose-tokenizer", "--tokenizer", "nobody/no-such-tokenizer", "--no-corpus"), "does not exist")


# ---- the model adapter ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_adapter_gives_transformers_logits_with_and_without_its_cache(arch: str, hf_models: dict[str, Path]) -> None:
    loaded = load_any_model(hf_models[arch])
    model = loaded.model
    assert isinstance(model, HFCausalLM) and model.cfg.max_seq_len == CONTEXT and loaded.origin == "transformers"
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_models[arch]).eval()
    idx = torch.randint(0, model.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(idx)
        torch.testing.assert_close(whole, reference(idx).logits)
        cache = model.new_cache()
        steps = [model(idx[:, :8], cache), *(model(idx[:, t : t + 1], cache) for t in range(8, 12))]
    assert cache.pos == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, CONTEXT + 1, dtype=torch.long))


def test_the_context_is_the_models_up_to_the_evaluation_cap() -> None:
    assert analysis_config(2048, 50257).model.max_seq_len == EVAL_CONTEXT
    assert analysis_config(None, 50257).model.max_seq_len == EVAL_CONTEXT
    assert analysis_config(CONTEXT, 4096).model.max_seq_len == CONTEXT
    assert analysis_config(2048, 50257).train.batch_size >= 1 and analysis_config(2048, 50257).train.article_weight == 1


# ---- eval, generate and compare on every architecture ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eval_and_generate_work_on_a_transformers_folder(arch: str, hf_models: dict[str, Path], cli_json) -> None:
    report = cli_json("eval", "--checkpoint", hf_models[arch], "--max-blocks", 8)
    m = report["metrics"]
    for key in ("loss_unweighted", "bpb", "article_loss", "article_recall", "article_p_target", "article_mass"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert report["data"]["seq_len"] == CONTEXT and report["shift_probe"]["verdict"] != "misaligned"
    # bits per byte from the model's own tokenizer: its bytes per token over its own token stream
    assert m["bpb"] == pytest.approx(m["loss_unweighted"] / math.log(2) / report["data"]["bytes_per_token"])
    assert report["calibration"]["raw"]["ece"] is not None and len(report["slot_probes"]) > 0
    assert report["correction"]["applied"] is False  # an unknown training weight counts as 1
    assert report["step"] is None and report["model"].startswith(f"transformers {arch}")
    doc = cli_json("generate", "-c", hf_models[arch], "-p", "Once upon a time there was", "--max-new-tokens", 8)
    assert doc["origin"] == "transformers" and doc["samples"][0]["new_tokens"] >= 1


@pytest.mark.slow
def test_a_cached_hub_id_loads_offline(hf_models: dict[str, Path], fake_hub: Callable, cli_json: Callable) -> None:
    model_id = fake_hub(hf_models["gpt2"])
    assert is_transformers(Path(model_id))
    report = cli_json("eval", "--checkpoint", model_id, "--max-blocks", 4)
    assert "snapshots" in report["checkpoint"] and report["data"]["seq_len"] == CONTEXT


@pytest.mark.slow
def test_compare_shows_a_run_and_a_transformers_model_side_by_side(
    tiny_run: Path, hf_models: dict[str, Path], cli_json: Callable, cli: Callable, one_thread: None
) -> None:
    doc = cli_json("compare", tiny_run, hf_models["llama"], *SMALL_COMPARE)
    run, model = doc["runs"]
    assert (run["origin"], model["origin"]) == ("tstool", "transformers")
    assert set(model["values"]) == {row.key for row in ROWS}
    assert run["values"]["step"] == 20 and model["values"]["step"] is None
    assert model["values"]["tokens_trained"] is None and model["values"]["wall_time_s"] is None
    assert model["sparklines"] == {"train_loss": "", "val_loss": ""} and model["curves"]["val_loss"]["steps"] == []
    for values in (run["values"], model["values"]):
        assert math.isfinite(values["bpb"]) and values["corpus_per_100_words"] > 0
    assert not doc["same_tokenizer"] and any("not trained by tstool" in n for n in doc["notes"])
    result = cli("compare", tiny_run, hf_models["gpt2"], *SMALL_COMPARE)
    assert result.exit_code == 0, result.stderr
    assert "val loss curve" in result.stdout and "val bits per byte" in result.stdout


# ---- the same numbers through both doors ------------------------------------------------------------------


@pytest.mark.slow
def test_a_checkpoint_and_its_export_give_the_same_numbers(tiny_run: Path, cli_json: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    cli_json("export-hf", "--checkpoint", tiny_run, "--out", folder)
    ours = cli_json("eval", "--checkpoint", tiny_run, "--max-blocks", 16)
    # the run's data section limits it to 300 stories: the export, on tstool's default data, is told so
    theirs = cli_json("eval", "--checkpoint", folder, "--max-blocks", 16, "--limit", 300)
    assert theirs["data"] == ours["data"]
    for key in ("loss_unweighted", "bpb", "article_loss", "other_loss", "article_precision", "article_recall"):
        assert theirs["metrics"][key] == pytest.approx(ours["metrics"][key], abs=1e-4), key
    for key in ("next_loss", "after_next_loss"):
        assert theirs["shift_probe"][key] == pytest.approx(ours["shift_probe"][key], abs=1e-4), key
    for mine, exported in zip(ours["slot_probes"], theirs["slot_probes"], strict=True):
        assert exported["article_mass"] == pytest.approx(mine["article_mass"], abs=1e-4)
        probs = [a["prob"] for a in mine["articles"]]
        assert [a["prob"] for a in exported["articles"]] == pytest.approx(probs, abs=1e-4)


# ---- bad inputs ------------------------------------------------------------------------------------------


class Hostile:
    """Unpickled, it would create the file: what a .bin may do when read with plain pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def vision_model(folder: Path) -> Path:
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=8, patch_size=4
    )
    transformers.ViTModel(config).save_pretrained(folder)
    return folder


def asking_for_its_code(source: Path, folder: Path, marker: Path) -> Path:
    copy_model(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return folder


def missing_a_tensor(source: Path, folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    copy_model(source, folder)
    weights = load_file(folder / "model.safetensors")
    del weights[next(name for name in weights if "attn" in name)]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def pickled_weights(source: Path, folder: Path, marker: Path) -> Path:
    copy_model(source, folder, drop=("*.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Hostile(marker)))
    return folder


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("vision", "not a causal language model"),
        ("no tokenizer", "holds no tokenizer"),
        ("unknown hub id", "does not exist"),
        ("remote code", "auto_map"),
        ("hostile pickle", "weights could not be loaded"),
        ("missing weights", "do not fit its config"),
    ],
)
def test_bad_models_get_one_line_and_exit_2_with_nothing_written(
    case: str, fragment: str, hf_models: dict[str, Path], cli: Callable, user_error: Callable, tmp_path: Path
) -> None:
    marker, gpt2 = tmp_path / "code-ran", hf_models["gpt2"]
    model = {
        "vision": lambda: vision_model(tmp_path / "vit"),
        "no tokenizer": lambda: copy_model(gpt2, tmp_path / "bare", drop=("tokenizer*",)),
        "unknown hub id": lambda: "nobody/no-such-model",
        "remote code": lambda: asking_for_its_code(gpt2, tmp_path / "custom", marker),
        "hostile pickle": lambda: pickled_weights(gpt2, tmp_path / "pickled", marker),
        "missing weights": lambda: missing_a_tensor(gpt2, tmp_path / "damaged"),
    }[case]()
    before = sorted(tmp_path.rglob("*"))
    user_error(cli("eval", "--checkpoint", model, "--max-blocks", 2), fragment)
    user_error(cli("generate", "--checkpoint", model, "--score-articles"), fragment)
    user_error(cli("compare", model, *SMALL_COMPARE, "--json"), fragment)  # --json: no status lines before it
    assert not marker.exists() and sorted(tmp_path.rglob("*")) == before  # no cache, no file, no code run


# ---- it catches the bug it was built for, in a model it did not train ---------------------------------------


def train_hf(folder: Path, double_shift: bool, steps: int = 300) -> Path:
    """Train the model in `folder` through its own loss, `model(x, labels=labels)`, which shifts the labels.

    With `double_shift`, as the predecessor did: its dataset already shifted them (labels = x[:, 1:],
    padded), so the model's loss shifts a second time and every position learns the token after next.
    """
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokens = load_tokens(DataConfig(limit=300), "train", load_hf_tokenizer(str(folder))).tokens
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(tokens) - CONTEXT, 16)
        x = torch.from_numpy(tokens[starts[:, None] + np.arange(CONTEXT)].astype(np.int64))
        labels = F.pad(x[:, 1:], (0, 1), value=-100) if double_shift else x
        loss = model(input_ids=x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("double_shift", "verdict", "code"), [(False, "aligned", 0), (True, "misaligned", 1)])
def test_eval_flags_a_transformers_model_trained_on_double_shifted_labels(
    double_shift: bool,
    verdict: str,
    code: int,
    hf_models: dict[str, Path],
    cli_json: Callable,
    cli: Callable,
    tmp_path: Path,
    one_thread: None,
) -> None:
    folder = train_hf(copy_model(hf_models["gpt_neo"], tmp_path / "neo"), double_shift)
    report = cli_json("eval", "--checkpoint", folder, "--max-blocks", 64, code=code)
    probe = report["shift_probe"]
    assert probe["verdict"] == verdict and report["ok"] is (code == 0)
    gap = probe["after_next_loss"] - probe["next_loss"]
    assert abs(gap) > 3 * SHIFT_MARGIN and (gap > 0) is not double_shift
    result = cli("eval", "--checkpoint", folder, "--max-blocks", 64)
    assert result.exit_code == code and "Model transformers gpt_neo" in result.stdout
    if double_shift:
        assert "labels shifted twice" in result.stderr


@pytest.mark.slow
def test_generate_scores_articles_of_a_sentencepiece_model(hf_models: dict[str, Path], cli_json: Callable) -> None:
    """Corpus statistics and held-out openings with the model's own tokenizer, continuations decoded to text."""
    doc = cli_json("generate", "-c", hf_models["llama"], "--score-articles", "--max-new-tokens", 12, "--seed", 0)
    score = doc["score"]
    assert score["corpus"]["matched"] and score["corpus"]["per_100_words"] > 0 and score["words"] > 0
    assert all("▁" not in s["continuation"] for s in doc["samples"])


# ---- a fake hub cache ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub() -> Iterator[Callable[[Path], str]]:
    """Puts a folder into the Hugging Face cache (HF_HOME is the session's temporary one) as a hub model
    `tstool-tests/NAME`, with refs/main naming its snapshot; returns the id. Removed after the test."""
    from huggingface_hub.constants import HF_HUB_CACHE

    made: list[Path] = []

    def put(folder: Path) -> str:
        name = f"{folder.name}-{len(made)}"
        repo = Path(HF_HUB_CACHE) / f"models--tstool-tests--{name}"
        revision = "0" * 40
        shutil.copytree(folder, repo / "snapshots" / revision)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        made.append(repo)
        return f"tstool-tests/{name}"

    yield put
    for repo in made:
        shutil.rmtree(repo, ignore_errors=True)


@pytest.mark.slow
def test_eval_vs_hf_benchmark_runs_end_to_end(one_thread: None) -> None:
    from rich.console import Console

    from bench import eval_vs_hf

    console = Console(width=120, record=True)
    result = eval_vs_hf.run(console, rounds=1, blocks=1)
    assert result.value is not None and result.ok == (result.value >= eval_vs_hf.TARGET)
    assert eval_vs_hf.METRICS in console.export_text()
