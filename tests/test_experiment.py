"""`tstool experiment`: seeded debug runs of every arm, measured alike, reported with intervals; a rerun
reuses them; the statistics the report rests on."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tstool.analysis.calibration import Correction
from tstool.analysis.experiment import ArmKey, Measured, plan_runs, run_action, run_config, summarise
from tstool.analysis.statistics import bootstrap_rate, bootstrap_rate_difference, direction, t_interval
from tstool.config import resolve
from tstool.errors import ConfigError
from tstool.training.trainer import RunOptions, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARGS = ("--config", "debug", "--max-steps", 8, "--seeds", 2, "--prompts", 4, "--max-new-tokens", 12, "--max-blocks", 8)
RUNS = ("w1-s1337", "w5-s1337", "w5-adjusted-s1337", "w1-s1338", "w5-s1338", "w5-adjusted-s1338")


def snapshot(run: Path) -> dict[str, bytes]:
    """metrics.jsonl and every checkpoint file of a run folder."""
    files = [run / "metrics.jsonl", *sorted((run / "checkpoints").rglob("*.*"))]
    return {str(f.relative_to(run)): f.read_bytes() for f in files if f.is_file()}


@pytest.mark.slow
def test_the_study_trains_every_arm_per_seed_reports_intervals_and_reuses_finished_runs(
    cli_json: Callable, one_thread: None
) -> None:
    doc = cli_json("experiment", *ARGS, "--out-dir", "exp")
    out = Path("exp")
    assert doc == json.loads((out / "report.json").read_text())  # the same numbers on stdout and on disk
    assert doc["actions"] == dict.fromkeys(RUNS, "train") and doc["seeds"] == [1337, 1338]
    for name in ("dose_response.png", "reliability.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    arms = {a["arm"]: a for a in doc["arms"]}
    assert list(arms) == ["weight 1", "weight 5 raw", "weight 5 corrected", "weight 5 adjusted"]
    assert all(a["estimates"]["generated_rate"]["seeds"] == 2 for a in arms.values())
    raw, corrected = arms["weight 5 raw"], arms["weight 5 corrected"]
    assert raw["estimates"]["tau"]["mean"] == 0.0  # raw: no correction
    per_seed = [row for row in doc["per_seed"] if row["arm"] == "weight 5 corrected"]
    assert [row["correction"]["source"] for row in per_seed] == ["fitted", "fitted"]
    kept = json.loads((out / "w5-s1337" / "checkpoints" / "latest" / "meta.json").read_text())["article_correction"]
    assert per_seed[0]["tau"] == kept["tau"]  # the tau kept with the checkpoint
    for arm in (raw, corrected, arms["weight 5 adjusted"]):
        assert set(arm["differences_from_baseline"]) >= {"generated_rate", "bpb", "ece"}
        assert arm["verdicts"]["bpb"] in ("better", "worse", "no clear difference")
    report = (out / "report.md").read_text()
    assert "| weight 5 adjusted |" in report and "ancestral sampling (temperature 1" in report
    assert f"{doc['reference_per_100_words']['mean']:.2f}" in report

    before = {run: snapshot(out / run) for run in RUNS}
    again = cli_json("experiment", *ARGS, "--out-dir", "exp")
    assert again["actions"] == dict.fromkeys(RUNS, "reuse")
    assert {run: snapshot(out / run) for run in RUNS} == before  # nothing retrained
    assert again["arms"] == doc["arms"]  # measured alike: same blocks, same prompts, same seeded generations


def test_runs_of_a_seed_share_it_and_adjusted_twins_only_for_weights_other_than_one() -> None:
    cfg = resolve("debug")
    runs = plan_runs(cfg, [1.0, 5.0], [7, 8], ["raw", "corrected", "adjusted"])
    assert [r.label for r in runs] == ["w1-s7", "w5-s7", "w5-adjusted-s7", "w1-s8", "w5-s8", "w5-adjusted-s8"]
    assert [(r.config.train.seed, r.config.train.logit_adjusted) for r in runs[:3]] == [
        (7, False),
        (7, False),
        (7, True),
    ]
    assert [r.label for r in plan_runs(cfg, [1.0, 5.0], [7], ["adjusted"])] == ["w1-s7", "w5-adjusted-s7"]


@pytest.mark.slow
def test_run_action_resumes_reuses_or_refuses(one_thread: None) -> None:
    cfg = run_config(resolve("debug", {"train.max_steps": 4}), 5.0, False, 1)
    run = Path("w5")
    assert run_action(run, cfg) == "train"
    train(cfg, RunOptions(out_dir=run, stop_after=2))  # an interrupted run
    assert run_action(run, cfg) == "resume"
    train(cfg, RunOptions(out_dir=run, resume="auto"))
    assert run_action(run, cfg) == "reuse"
    with pytest.raises(ConfigError, match="different config"):
        run_action(run, run_config(cfg, 3.0, False, 1))


def test_intervals_cover_the_truth_and_say_no_clear_difference_when_they_cover_zero() -> None:
    estimate = t_interval([1.0, 2.0, 3.0])
    assert estimate.mean == 2.0 and estimate.low == pytest.approx(2.0 - 4.303 / 3**0.5 * 1.0, rel=1e-3)
    assert direction(t_interval([-1.0, 1.0, 0.5])) == "no clear difference"
    assert direction(t_interval([1.0, 1.1, 0.9]), lower_is_better=True) == "worse"
    assert direction(t_interval([0.3])) == "one seed: no interval"
    stories = [[(10, 100)] * 20, [(8, 100)] * 20]  # two seeds: 10 and 8 per 100 words
    assert bootstrap_rate(stories).mean == 9.0
    same = bootstrap_rate_difference(stories, stories)
    assert same.mean == 0.0 and direction(same) == "no clear difference"
    more = bootstrap_rate_difference([[(a + 5, w) for a, w in seed] for seed in stories], stories)
    assert more.low > 4.0 and direction(more) == "higher"


@pytest.mark.parametrize("seeds", [2, 5, 20])
def test_the_verdict_against_the_reference_counts_the_references_own_sampling_error(seeds: int) -> None:
    # Stories go on with 4 or 13 articles per 100 words (8.5 pooled). A model writing 9 in every story
    # has no spread of its own, yet 48 such stories cannot tell 9 from 8.5, however many seeds are run.
    reference = [(4, 100), (13, 100)] * 24
    faithful = [Measured(ArmKey(1.0, "baseline"), seed, "w1", Correction(0.0, "none"), {"article_recall": 0.5},
                         [], [], [(9, 100)] * 48, "") for seed in range(seeds)]  # fmt: skip
    [summary] = summarise(faithful, reference)
    assert summary.estimates["generated_rate"].covers(8.5) is False  # the model's interval alone excludes it
    assert summary.against_reference.low < -0.5 and summary.against_reference.high > 1.5  # as wide as 48 stories
    assert summary.against_reference.mean == pytest.approx(0.5)
    assert summary.verdicts["generated_rate_vs_reference"] == "consistent with the corpus"
    doubled = [dataclasses.replace(m, stories=[(18, 100)] * 48) for m in faithful]
    assert summarise(doubled, reference)[0].verdicts["generated_rate_vs_reference"] == "above the corpus"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--weights", "1"], "baseline 1 first"),
        (["--weights", "1,x"], "not a list of numbers"),
        (["--weights", "5,1"], "baseline 1 first"),
        (["--arms", "raw,best"], "--arms"),
        (["--correction", "-2"], "--correction"),
        (["--correction", "none"], "corrected arm"),
        (["--set", "train.article_weight=2"], "--weights"),
        (["--config", "nope"], "unknown preset"),
    ],
)
def test_bad_input_exits_2_before_training(args: list[str], fragment: str, cli: Callable, user_error: Callable) -> None:
    user_error(cli("experiment", *args, "--out-dir", "exp"), fragment)
    assert not Path("exp").exists()
