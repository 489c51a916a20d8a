"""Training and validation curves of one or more runs, from their metrics.jsonl, in one figure.

matplotlib is an optional dependency (`tstool[plot]`), imported only when a figure is drawn. The
figure is built on an Agg canvas without pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tstool.atomic import replacing
from tstool.errors import InputError, TstoolError
from tstool.runs.metrics_log import read_metrics
from tstool.runs.run_dir import METRICS_FILE

Record = dict[str, Any]


@dataclass(frozen=True)
class RunCurves:
    """The train and val records of one run's metrics.jsonl."""

    label: str
    path: Path
    train: list[Record]
    val: list[Record]

    def series(self, key: str, split: str = "train") -> tuple[list[int], list[float]]:
        """Steps and values of `key`; a missing value is nan so a line shows a gap rather than a jump."""
        records = self.val if split == "val" else self.train
        return [r["step"] for r in records], [float("nan") if r.get(key) is None else r[key] for r in records]

    def summary(self) -> dict[str, Any]:
        last_train, last_val = (self.train or [{}])[-1], (self.val or [{}])[-1]
        return {
            "label": self.label,
            "path": str(self.path),
            "train_points": len(self.train),
            "val_points": len(self.val),
            "last_step": max((r["step"] for r in self.train + self.val), default=0),
            "final_train_loss": last_train.get("loss_unweighted"),
            "final_val_loss": last_val.get("loss_unweighted"),
            "final_val_bpb": last_val.get("bpb"),
            "best_val_loss": min((r["loss_unweighted"] for r in self.val), default=None),
        }


def _default_label(path: Path) -> str:
    """The run folder's name (of a metrics.jsonl file: its folder's)."""
    return path.parent.name if path.is_file() else path.name


def load_curves(path: Path, label: str | None = None) -> RunCurves:
    """A run folder (or its metrics.jsonl file) as curves; missing or empty metrics are an InputError."""
    if not path.exists():
        raise InputError(f"run folder {path} does not exist: pass folders written by `tstool train --out-dir`")
    metrics = path if path.is_file() else path / METRICS_FILE
    if not metrics.is_file():
        raise InputError(f"{path} has no {METRICS_FILE}: pass a run folder written by `tstool train --out-dir`")
    records = [r for r in read_metrics(metrics) if r.get("loss_unweighted") is not None and "step" in r]
    if not records:
        raise InputError(f"{metrics} holds no metric records yet: train for at least train.log_interval steps")
    return RunCurves(
        label=label or _default_label(path),
        path=path,
        train=[r for r in records if r.get("split") is None],
        val=[r for r in records if r.get("split") == "val"],
    )


# (title, y label, metric keys, splits drawn)
PANELS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Loss (unweighted cross-entropy)", "nats / token", ("loss_unweighted",), ("train", "val")),
    ("Article vs other loss", "nats / token", ("article_loss", "other_loss"), ("train", "val")),
    ("Article / other loss ratio", "ratio", ("ratio",), ("train", "val")),
    ("Validation bits per byte", "bits / byte", ("bpb",), ("val",)),
)
# (split, index of the key in its panel) -> line style and marker: colour tells runs apart, style the rest
STYLES: dict[tuple[str, int], tuple[str, str | None]] = {
    ("train", 0): ("-", None),
    ("val", 0): ("--", "o"),
    ("train", 1): (":", None),
    ("val", 1): ("-.", "s"),
}


def _unique_labels(paths: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        names = [_default_label(p) for p in paths]
        # Same-named runs (runs/a/latest, runs/b/latest) are told apart by their full paths.
        return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths, strict=True)]
    if len(labels) != len(paths):
        raise InputError(f"{len(labels)} labels for {len(paths)} runs: pass one label per run, e.g. --labels a,b")
    return list(labels)


def plot_runs(paths: Sequence[Path], out: Path, labels: Sequence[str] | None = None) -> list[RunCurves]:
    """Draw the curves of every run overlaid, one subplot per metric; write `out` atomically.

    The image format follows out's suffix (.png, .svg, .pdf, ...).
    """
    runs = [load_curves(p, label) for p, label in zip(paths, _unique_labels(paths, labels), strict=True)]
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise TstoolError("plotting needs matplotlib, which is not installed: pip install 'tstool[plot]'")

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in canvas.get_supported_filetypes():
        raise InputError(f"cannot write a .{fmt or '(none)'} image: give --out a .png, .svg or .pdf name")
    axes = list(fig.subplots(2, 2).flat)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (title, ylabel, keys, splits) in zip(axes, PANELS, strict=True):
        for run, color in zip(runs, colors, strict=True):
            for k, key in enumerate(keys):
                for split in splits:
                    linestyle, marker = STYLES[split, k]
                    ax.plot(
                        *run.series(key, split),
                        linestyle=linestyle,
                        marker=marker,
                        color=color,
                        markersize=3,
                        linewidth=1.4,
                    )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[2].axhline(1.0, color="grey", linewidth=0.8)  # ratio 1: articles as hard as other tokens

    def key(label: str, split: str, k: int = 0) -> Line2D:
        linestyle, marker = STYLES[split, k]
        return Line2D([], [], color="black", linestyle=linestyle, marker=marker, markersize=3, label=label)

    runs_legend = [Line2D([], [], color=c, label=r.label) for r, c in zip(runs, colors, strict=True)]
    axes[0].legend(handles=runs_legend + [key("train", "train"), key("val", "val")], fontsize="small")
    axes[1].legend(
        handles=[
            key(f"{name} {split}", split, k)
            for k, name in enumerate(("article", "other"))
            for split in ("train", "val")
        ],
        fontsize="small",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)
    return runs
