"""`tstool plot` and the terminal sparkline."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tstool.ui.evaluation import sparkline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_sparkline_scales_from_min_to_max() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3.0, None, float("nan"), 1.0]) == "█  ▁"
    assert sparkline([2.0, 2.0]) == "▄▄"
    assert sparkline([]) == ""
    assert sparkline([None]) == " "


def test_sparkline_buckets_long_series_to_width() -> None:
    line = sparkline([float(v) for v in range(100, 0, -1)], width=10)
    assert len(line) == 10 and line[0] == "█" and line[-1] == "▁"
    assert list(line) == sorted(line, reverse=True)


@pytest.mark.slow
def test_plot_overlays_two_runs_in_one_png(eval_runs: Callable[[str], Path], cli_json: Callable) -> None:
    runs = [eval_runs("base"), eval_runs("weighted")]
    report = cli_json("plot", *runs, "--out", "plots/curves.png", "--labels", "base,weighted")
    out = Path("plots/curves.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary file left behind
    assert [r["label"] for r in report["runs"]] == ["base", "weighted"]
    assert [r["last_step"] for r in report["runs"]] == [20, 10]
    assert all(r["train_points"] and r["val_points"] for r in report["runs"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing", "--out", "x.png"], "does not exist"),
        (["EMPTY", "--out", "x.png"], "no metrics.jsonl"),
        (["BLANK", "--out", "x.png"], "holds no metric records"),
        (["RUN", "--out", "x.png", "--labels", "a,b"], "2 labels for 1 runs"),
        (["RUN", "--out", "x.png", "--labels", "a,"], "empty label"),
        (["RUN", "--out", "x.nope"], "cannot write a .nope image"),
    ],
)
def test_bad_input_exits_2(
    args: list[str], fragment: str, eval_runs: Callable[[str], Path], cli: Callable, user_error: Callable
) -> None:
    Path("EMPTY").mkdir()
    Path("BLANK").mkdir()
    Path("BLANK/metrics.jsonl").write_text('{"step": 1, "event": "skipped"}\n')
    args = [str(eval_runs("base")) if a == "RUN" else a for a in args]
    user_error(cli("plot", *args), fragment)
    assert not Path("x.png").exists()


def test_missing_matplotlib_is_a_clear_error(
    eval_runs: Callable[[str], Path], cli: Callable, user_error: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (
        "matplotlib",
        "matplotlib.backends.backend_agg",
        "matplotlib.figure",
        "matplotlib.lines",
        "matplotlib.ticker",
    ):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail as if not installed
    user_error(cli("plot", eval_runs("base"), "--out", "x.png"), "pip install 'tstool[plot]'")
