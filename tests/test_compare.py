"""`tstool compare`: real debug runs measured alike, side by side."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tstool.analysis.compare import NOT_AVAILABLE, ROWS, training_time
from tstool.config import resolve
from tstool.ui.comparison import SPARK_WIDTH
from tstool.ui.evaluation import SPARK_CHARS

SMALL = ("--samples", 1, "--max-new-tokens", 16, "--max-blocks", 8)


def test_training_time_adds_up_the_invocations_of_a_resumed_run() -> None:
    # 100 tokens per record at 10 tokens/s: each record's window is 10 s. The run stopped after 20 s of
    # its first invocation; the resumed one restarts the clock and its first record reads 12 s.
    records = [
        {"step": 1, "tokens": 100, "tokens_per_s": 10.0, "elapsed_s": 10.0},
        {"step": 2, "tokens": 200, "tokens_per_s": 10.0, "elapsed_s": 20.0},
        {"step": 3, "tokens": 300, "tokens_per_s": 10.0, "elapsed_s": 12.0},
        {"step": 4, "tokens": 400, "tokens_per_s": 10.0, "elapsed_s": 22.5},
    ]
    assert training_time(records) == pytest.approx(20.0 + 22.5)
    assert training_time(records[:2]) == pytest.approx(20.0)
    assert training_time([]) is None


@pytest.mark.slow
def test_compare_two_runs_on_the_same_blocks_and_seed(
    eval_runs: Callable[[str], Path], cli_json: Callable, one_thread: None
) -> None:
    base, weighted = eval_runs("base"), eval_runs("weighted")
    doc = cli_json("compare", base, weighted, *SMALL)
    runs = doc["runs"]
    assert [r["label"] for r in runs] == ["base", "weighted"]

    cfg = resolve("debug")
    tokens_per_step = cfg.train.batch_size * cfg.model.max_seq_len
    for run, weight, steps in zip(runs, (1.0, 3.0), (20, 10), strict=True):
        values = run["values"]
        assert set(values) == {row.key for row in ROWS}
        assert values["article_weight"] == weight and values["step"] == steps
        assert values["tokens_trained"] == steps * tokens_per_step and values["wall_time_s"] > 0
        for key in ("loss_unweighted", "ppl", "bpb", "article_loss", "slot_article_mass", "slot_p_a"):
            assert isinstance(values[key], float) and math.isfinite(values[key]), key
        assert 0 <= values["slot_p_a"] <= values["slot_article_mass"] <= 1
        assert values["gen_per_100_words"] == run["generation"]["per_100_words"]
        assert values["corpus_per_100_words"] > 0 and values["gen_verdict"] == run["generation"]["verdict"]
        assert "divergence" in run["generation"]["contexts"]
        for name, split_points in (
            ("train_loss", run["curves"]["train_loss"]),
            ("val_loss", run["curves"]["val_loss"]),
        ):
            line = run["sparklines"][name]
            assert line and set(line) <= set(SPARK_CHARS) and len(line) == min(len(split_points["values"]), SPARK_WIDTH)

    # the same evaluation blocks and the same seeded generation settings for both
    assert runs[0]["eval"]["data"] == runs[1]["eval"]["data"] and runs[0]["eval"]["data"]["blocks"] == 8
    assert doc["shared_blocks"] and doc["same_tokenizer"]
    assert doc["generation"]["seed"] == 0 and doc["generation"]["settings"]["max_new_tokens"] == 16
    assert [s["prompt"] for s in runs[0]["samples"]] == [s["prompt"] for s in runs[1]["samples"]]

    # best per row agrees with the values
    loss = {r["label"]: r["values"]["loss_unweighted"] for r in runs}
    rows = {row["key"]: row for row in doc["rows"]}
    assert rows["loss_unweighted"]["best"] == [min(loss, key=loss.get)]
    assert rows["tokens_trained"]["best"] == []  # a budget, not a result

    # each run's generations are exactly what `tstool generate` gives with the same seed
    alone = cli_json(
        "generate",
        "-c",
        weighted,
        "--seed",
        0,
        "-n",
        1,
        "--max-new-tokens",
        16,
        "--temperature",
        1,
        "--correction",
        "none",
    )
    assert [s["continuation"] for s in alone["samples"]] == [s["continuation"] for s in runs[1]["samples"]]


def test_compare_renders_a_table(eval_runs: Callable[[str], Path], cli: Callable, one_thread: None) -> None:
    result = cli("compare", eval_runs("base"), *SMALL)
    assert result.exit_code == 0, result.stderr
    assert "val loss curve" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["RUN", "missing"], "does not exist"),
        (["NO_CKPT"], "holds no checkpoint"),
        (["RUN", "--device", "gpu"], "unknown device"),
    ],
)
def test_bad_input_exits_2(
    args: list[str], fragment: str, eval_runs: Callable[[str], Path], cli: Callable, user_error: Callable
) -> None:
    Path("NO_CKPT").mkdir()
    Path("NO_CKPT/metrics.jsonl").write_text((eval_runs("base") / "metrics.jsonl").read_text())
    args = [str(eval_runs("base")) if a == "RUN" else a for a in args]
    user_error(cli("compare", *args), fragment)


# Stories without "a", "an" or "the": the corpus statistics of a run trained on them count no articles.
NO_ARTICLE_WORDS = (
    "Tom Lily dog cat ran jumped played with ball in park sun was happy big red said hello to friend".split()
)


@pytest.fixture
def no_article_run(tmp_path: Path, one_thread: None) -> Path:
    """A debug run trained on a text file whose stories use no articles."""
    from tstool.training.trainer import RunOptions, train

    rng = random.Random(0)
    stories = [" ".join(rng.choice(NO_ARTICLE_WORDS) for _ in range(60)) + "." for _ in range(200)]
    data = tmp_path / "no-articles.txt"
    data.write_text("\n<|endoftext|>\n".join(stories), encoding="utf-8")
    out = tmp_path / "no-articles"
    train(resolve("debug", {"train.threads": 1, "data.files": [str(data)]}), RunOptions(out_dir=out))
    return out


@pytest.mark.slow
def test_compare_a_run_without_corpus_articles_shows_na(
    no_article_run: Path, eval_runs: Callable[[str], Path], cli_json: Callable, cli: Callable
) -> None:
    doc = cli_json("compare", no_article_run, eval_runs("base"), *SMALL)
    bare, base = doc["runs"]
    corpus_rows = [row.key for row in ROWS if row.needs_corpus]
    assert corpus_rows == ["corpus_per_100_words", "gen_verdict", "context_divergence"]
    assert all(bare["values"][key] is None for key in corpus_rows)
    assert all(base["values"][key] is not None for key in corpus_rows)  # the other run keeps its score
    assert bare["values"]["gen_per_100_words"] == bare["generation"]["per_100_words"]  # counted without a corpus
    assert "count no articles" in bare["generation"]["corpus_error"]
    assert any(note.startswith("no-articles has no corpus statistics") for note in doc["notes"])
    rows = {row["key"]: row for row in doc["rows"]}
    assert rows["gen_per_100_words"]["best"] == []  # only one run has a corpus rate to be close to

    result = cli("compare", no_article_run, *SMALL)
    assert result.exit_code == 0, result.stderr
    table = {
        line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.stdout.splitlines() if "│" in line
    }
    assert all(table[row.label] == NOT_AVAILABLE for row in ROWS if row.needs_corpus)
    assert table["val bits per byte"] != NOT_AVAILABLE
