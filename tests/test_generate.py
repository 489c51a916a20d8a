"""Generation: sampling filters, KV-cache decoding against a full recompute, stopping, cropping, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tstool.analysis.generate import (
    DEFAULT_PROMPTS,
    apply_repetition_penalty,
    decode,
    generate_samples,
    keep_top_k,
    keep_top_p,
    next_tokens,
    prompt_context,
    read_prompts,
    sampling_settings,
)
from tstool.config import GenerateConfig
from tstool.data.articles import DEFAULT_FORMS
from tstool.errors import ConfigError
from tstool.model.loading import LoadedModel, load_model

PROMPT = "Once upon a time there was"


# Decoding a tiny model is a chain of small matmuls; on a busy machine extra intra-op threads only
# wait on each other (ten times slower here), so these tests decode on one thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def loaded(tiny_run: Path) -> LoadedModel:
    return load_model(tiny_run)


def settings(**given: object) -> GenerateConfig:
    return sampling_settings(GenerateConfig(), **given)


@pytest.fixture
def eot_logit(loaded: LoadedModel) -> Iterator[Callable[[Callable[[int, torch.Tensor], None]], None]]:
    """Edit the real model's end-of-text logits per forward call: `eot_logit(lambda call, logits: ...)`."""
    handles = []

    def install(edit: Callable[[int, torch.Tensor], None]) -> None:
        calls = [0]

        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            out = out.clone()
            edit(calls[0], out[:, -1, loaded.tokenizer.eot_id])
            return out

        handles.append(loaded.model.lm_head.register_forward_hook(hook))

    yield install
    for handle in handles:
        handle.remove()


# ---- one step --------------------------------------------------------------------------------------


def test_repetition_penalty_pushes_seen_logits_down_whatever_their_sign() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.1, 0.3, 0.1]]))
    assert torch.isfinite(keep_top_k(logits, 2)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(keep_top_p(logits, 0.75)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(keep_top_p(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(keep_top_p(logits, 0.01)).sum() == 1  # the most likely token always stays


def test_greedy_takes_the_argmax_after_the_penalty() -> None:
    logits = torch.tensor([[3.0, 2.0, -1.0]])
    seen = torch.tensor([[True, False, False]])
    generator = torch.Generator().manual_seed(0)
    assert next_tokens(logits, seen, settings(greedy=True), generator).tolist() == [0]
    assert next_tokens(logits, seen, settings(greedy=True, repetition_penalty=2.0), generator).tolist() == [1]


def test_settings_override_the_config_and_reject_bad_values() -> None:
    base = GenerateConfig(temperature=0.7, top_k=40)
    merged = sampling_settings(base, top_p=0.9, top_k=None)
    assert (merged.temperature, merged.top_k, merged.top_p) == (0.7, 40, 0.9)
    assert sampling_settings(base, greedy=True).temperature == 0
    with pytest.raises(ConfigError, match="--top-p"):
        sampling_settings(base, top_p=1.5)
    with pytest.raises(ConfigError, match="--greedy"):
        sampling_settings(base, greedy=True, temperature=0.5)


# ---- decoding with the real tiny model -------------------------------------------------------------


def reference_decode(loaded: LoadedModel, context: list[int], config: GenerateConfig, seed: int) -> list[int]:
    """Token-by-token decoding that recomputes the whole sequence every step, with no cache."""
    model, generator = loaded.model, torch.Generator().manual_seed(seed)
    ids, seen = list(context), torch.zeros(1, model.vocab_size, dtype=torch.bool)
    seen[0, ids] = True
    seen[0, loaded.tokenizer.eot_id] = False
    with torch.inference_mode():
        for _ in range(config.max_new_tokens):
            token = int(next_tokens(model(torch.tensor([ids]))[:, -1], seen, config, generator))
            if token == loaded.tokenizer.eot_id:
                break
            ids.append(token)
            seen[0, token] = True
    return ids[len(context) :]


@pytest.mark.parametrize("config", [{"greedy": True}, {"temperature": 1.0, "top_k": 50, "repetition_penalty": 1.3}])
def test_kv_cache_decoding_equals_full_recompute(loaded: LoadedModel, config: dict) -> None:
    context = loaded.tokenizer.encode(PROMPT)
    chosen = settings(max_new_tokens=loaded.model.cfg.max_seq_len - len(context), **config)
    rows, notes = decode(loaded.model, context, chosen, torch.Generator().manual_seed(5), loaded.tokenizer.eot_id)
    assert rows[0].tokens == reference_decode(loaded, context, chosen, seed=5)
    assert notes == []


def test_same_seed_same_text_and_greedy_is_deterministic(loaded: LoadedModel) -> None:
    sampled = settings(max_new_tokens=12, num_samples=3, temperature=1.0)
    first = generate_samples(loaded, [PROMPT, "Tom"], sampled, seed=7)
    assert generate_samples(loaded, [PROMPT, "Tom"], sampled, seed=7) == first
    assert generate_samples(loaded, [PROMPT, "Tom"], sampled, seed=8) != first
    assert [s.index for s in first] == [0, 1, 2, 0, 1, 2]
    greedy = settings(max_new_tokens=12, greedy=True)
    assert generate_samples(loaded, [PROMPT], greedy, seed=1) == generate_samples(loaded, [PROMPT], greedy, seed=2)


def test_each_row_stops_at_end_of_text(loaded: LoadedModel, eot_logit) -> None:
    # Call 1 is the prefill; on call 3 row 0 is made to choose end-of-text as its third token.
    def force(call: int, eot: torch.Tensor) -> None:
        eot.fill_(-1e9)
        if call == 3:
            eot[0] = 1e9

    eot_logit(force)
    rows, _ = decode(
        loaded.model,
        [1, 2, 3],
        settings(max_new_tokens=8, greedy=True),
        torch.Generator(),
        loaded.tokenizer.eot_id,
        batch=2,
    )
    assert [(len(r.tokens), r.stop) for r in rows] == [(2, "eot"), (8, "length")]
    assert loaded.tokenizer.eot_id not in rows[1].tokens


def test_long_prompts_are_cropped_and_long_outputs_slide(loaded: LoadedModel, eot_logit) -> None:
    eot_logit(lambda call, eot: eot.fill_(-1e9))
    max_len = loaded.model.cfg.max_seq_len
    long_prompt = "The dog ran to the park and played with a ball. " * 10
    context, warnings = prompt_context(loaded, long_prompt)
    assert len(context) == max_len and "only its last" in warnings[0]
    [sample] = generate_samples(loaded, [long_prompt], settings(max_new_tokens=2 * max_len, greedy=True), seed=0)
    assert sample.prompt_tokens == max_len and len(sample.tokens) == 2 * max_len and sample.stop == "length"
    assert sample.warnings[0] == warnings[0]
    assert "outgrew the model's context" in sample.warnings[1]


def test_empty_prompt_starts_a_story(loaded: LoadedModel) -> None:
    assert prompt_context(loaded, "") == ([loaded.tokenizer.eot_id], [])
    [sample] = generate_samples(loaded, [""], settings(max_new_tokens=5, greedy=True), seed=0)
    assert sample.prompt == "" and sample.continuation


def test_prompts_file_skips_blank_lines_and_keeps_spaces(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("Once upon a time \n\n  \nThere was a big\n", encoding="utf-8")
    assert read_prompts(path) == ["Once upon a time ", "There was a big"]
    assert "Once upon a time there was" in DEFAULT_PROMPTS


# ---- CLI ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_generate_json_with_article_scores(cli_json, tiny_run: Path) -> None:
    """Without prompts, scoring prompts with held-out validation openings, judged against those stories."""
    from tstool.analysis.scoring import MATCHED_PROMPTS

    args = ("generate", "-c", tiny_run, "-n", 2, "--max-new-tokens", 12, "--seed", 3, "--score-articles")
    out = cli_json(*args, "--temperature", 1)
    assert out["seed"] == 3 and out["settings"]["num_samples"] == 2
    assert len(out["samples"]) == 2 * MATCHED_PROMPTS  # openings of different stories may read alike
    assert not {s["prompt"] for s in out["samples"]} & set(DEFAULT_PROMPTS)
    for sample in out["samples"]:
        articles = sample["articles"]
        assert {"count", "per_100_words", "by_form", "words"} <= set(articles)
        assert sum(articles["by_form"].values()) == articles["count"]
    score = out["score"]
    assert score["samples"] == len(out["samples"])
    assert score["count"] == sum(s["articles"]["count"] for s in out["samples"])
    assert score["corpus"]["matched"] and score["corpus"]["per_100_words"] > 0
    assert score["sampling"] == "ancestral" and score["rate_verdict"] != "not judged"
    assert {"divergence", "expected_if_matching_corpus", "worst", "verdict"} <= set(score["contexts"])
    assert score["verdict"] in {
        "ok",
        "dropping articles",
        "over-using articles",
        "misplacing articles",
        "too little text",
    }
    again = cli_json(*args, "--temperature", 1)
    assert again["samples"] == out["samples"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "named"),
    [(["--temperature", 0.8], "temperature 0.8"), (["--top-k", 20], "top-k 20"), (["--top-p", 0.9], "top-p 0.9")],
)
def test_a_rate_sampled_other_than_ancestrally_is_reported_not_judged(
    cli_json, tiny_run: Path, settings: list, named: str
) -> None:
    out = cli_json(
        "generate",
        "-c",
        tiny_run,
        "--max-new-tokens",
        8,
        "--seed",
        1,
        "--score-articles",
        "--temperature",
        1,
        *settings,
    )
    assert out["score"]["rate_verdict"] == "not judged" and named in out["score"]["sampling"]
    assert out["score"]["per_100_words"] >= 0  # the rate is still reported


def test_with_the_users_prompts_the_reference_is_the_whole_corpus_labelled_unmatched(cli_json, tiny_run: Path) -> None:
    out = cli_json("generate", "-c", tiny_run, "-p", "Once upon a time", "--max-new-tokens", 8, "--score-articles")
    assert not out["score"]["corpus"]["matched"] and "unmatched" in out["score"]["corpus"]["label"]


@pytest.mark.slow
def test_a_weighted_model_is_sampled_with_its_correction(cli_json, cli, eval_runs, user_error) -> None:
    """The bias lowers the article logits before sampling: with a huge tau articles all but vanish."""
    weighted = eval_runs("weighted")
    args = ("generate", "-c", weighted, "--max-new-tokens", 40, "--seed", 2, "-n", 4, "--temperature", 1)
    corrected = cli_json(*args, "--correction", 50, "--score-articles")
    # bare lowercase "a" (after a newline or a quote) is scored but is no weighted form, so it is not lowered
    lowered = {form: n["count"] for form, n in corrected["score"]["by_form"].items() if form in DEFAULT_FORMS}
    assert corrected["correction"]["tau"] == 50 and set(lowered.values()) == {0}
    fitted = cli_json(*args, "--correction", "fitted")
    assert fitted["correction"]["source"] == "fitted"
    user_error(cli("generate", "-c", weighted, "--correction", "-1"), "--correction")
    user_error(cli("generate", "-c", eval_runs("base"), "--correction", "1"), "weight-1")


def test_cli_scores_against_a_stats_file(cli, cli_json, tiny_run: Path) -> None:
    assert cli("dataset-stats", "--limit", 40, "--out", "stats.json", "--json").exit_code == 0
    out = cli_json("generate", "-c", tiny_run, "-p", "There was a big", "--max-new-tokens", 8, "--stats", "stats.json")
    assert out["score"]["corpus"]["source"] == "stats.json"
    assert (
        out["score"]["corpus"]["per_100_words"]
        == json.loads(Path("stats.json").read_text())["word_level"]["per_100_words"]
    )


def test_cli_human_output_runs(cli, tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("Lily saw\n", encoding="utf-8")
    result = cli(
        "generate", "-c", tiny_run, "--prompts-file", tmp_path / "p.txt", "--max-new-tokens", 8, "--score-articles"
    )
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-c", "no/such/run"], "does not exist"),
        (["--top-p", "1.5"], "--top-p"),
        (["--stats", "missing.json"], "dataset-stats"),
        (["--prompts-file", "missing.txt"], "--prompts-file"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(cli, user_error, tiny_run: Path, args: list[str], fragment: str) -> None:
    checkpoint = [] if "-c" in args else ["-c", tiny_run]
    user_error(cli("generate", *checkpoint, *args, "--max-new-tokens", 4), fragment)
