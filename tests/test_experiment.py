"""`tstool experiment`: two real debug runs trained alike, compared, reported; a rerun reuses them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tstool.config import resolve
from tstool.errors import ConfigError
from tstool.analysis.experiment import change, run_action, weight_config
from tstool.training.trainer import RunOptions, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARGS = ("--config", "debug", "--max-steps", 8, "--samples", 1, "--max-new-tokens", 16, "--max-blocks", 16)


def test_change_is_signed_relative_and_in_points_for_shares() -> None:
    assert change(3.2, 3.25, ".3f", " nats") == "3.200 → 3.250 nats (+0.050, +1.6%)"
    assert change(2.0, 1.5, ".3f") == "2.000 → 1.500 (\u22120.500, \u221225.0%)"
    assert change(0.25, 0.375, ".1%") == "25.0% → 37.5% (+12.5 points)"
    assert change(None, 0.5, ".1%") == "- → 50.0%"


def snapshot(run: Path) -> dict[str, bytes]:
    """metrics.jsonl and every checkpoint file of a run folder."""
    files = [run / "metrics.jsonl", *sorted((run / "checkpoints").rglob("*.*"))]
    return {str(f.relative_to(run)): f.read_bytes() for f in files if f.is_file()}


def test_experiment_reports_computed_findings_and_reuses_finished_runs(cli_json: Callable, one_thread: None) -> None:
    doc = cli_json("experiment", *ARGS, "--out-dir", "exp")
    out = Path("exp")
    assert doc == json.loads((out / "report.json").read_text())  # the same numbers on stdout and on disk
    assert doc["actions"] == {"w1": "train", "w5": "train"}
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE

    runs = {r["label"]: r for r in doc["comparison"]["runs"]}
    w1, w5 = runs["w1"]["values"], runs["w5"]["values"]
    assert (w1["article_weight"], w5["article_weight"]) == (1.0, 5.0)
    assert w1["tokens_trained"] == w5["tokens_trained"] == 8 * 4 * 32  # the same budget
    assert runs["w1"]["eval"]["data"] == runs["w5"]["eval"]["data"]  # the same blocks

    report = (out / "report.md").read_text()
    for label in ("w1", "w5"):
        assert f"| {label} | " in report  # a table row per weight
    findings = doc["findings"]["w5"]
    assert [f["question"] for f in findings] == [
        "Does it improve article use in generations?",
        "Does it improve predictions at article slots?",
        "What does it cost in unweighted loss?",
    ]
    for finding in findings:
        assert finding["answer"][1:] in report  # its first letter is capitalised there
        assert all(sentence in report for sentence in finding["evidence"])
    # the sentences carry the measured numbers, whichever way they fall
    assert f"{w1['loss_unweighted']:.3f} → {w5['loss_unweighted']:.3f} nats" in report
    assert f"from {w1['gen_per_100_words']:.2f} to {w5['gen_per_100_words']:.2f} per 100 words" in report
    assert f"{w1['article_loss']:.3f} → {w5['article_loss']:.3f} nats" in report

    before = {label: snapshot(out / label) for label in ("w1", "w5")}
    again = cli_json("experiment", *ARGS, "--out-dir", "exp")
    assert again["actions"] == {"w1": "reuse", "w5": "reuse"}
    assert {label: snapshot(out / label) for label in ("w1", "w5")} == before  # nothing retrained
    for first, second in zip(doc["comparison"]["runs"], again["comparison"]["runs"], strict=True):
        assert second["values"] == first["values"]  # measured alike: same blocks, same seeded generations


def test_run_action_resumes_reuses_or_refuses(one_thread: None) -> None:
    cfg = weight_config(resolve("debug", {"train.max_steps": 4}), 5.0)
    run = Path("w5")
    assert run_action(run, cfg) == "train"
    train(cfg, RunOptions(out_dir=run, stop_after=2))  # an interrupted run
    assert run_action(run, cfg) == "resume"
    train(cfg, RunOptions(out_dir=run, resume="auto"))
    assert run_action(run, cfg) == "reuse"
    with pytest.raises(ConfigError, match="different config"):
        run_action(run, weight_config(cfg, 3.0))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--weights", "1"], "two or more different weights"),
        (["--weights", "1,x"], "not a list of numbers"),
        (["--weights", "5,5"], "two or more different weights"),
        (["--set", "train.article_weight=2"], "--weights"),
        (["--config", "nope"], "unknown preset"),
    ],
)
def test_bad_input_exits_2_before_training(args: list[str], fragment: str, cli: Callable, user_error: Callable) -> None:
    user_error(cli("experiment", *args, "--out-dir", "exp"), fragment)
    assert not Path("exp").exists()
