"""Rendering training events: a Rich live table on a terminal, plain lines elsewhere."""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tstool.training.health import ratio_band

SEVERITY_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "bad": "bold red"}
COLUMNS = (
    "step",
    "epoch",
    "loss",
    "unweighted",
    "ppl",
    "article",
    "other",
    "ratio",
    "art acc",
    "lr",
    "grad",
    "tok/s",
    "MFU",
    "ETA",
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "nan"
    return f"{value:.{digits}f}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def ratio_text(ratio: float | None, article_weight: float) -> Text:
    label, severity = ratio_band(ratio, article_weight)
    return Text(f"{_num(ratio, 2)} {label}", style=SEVERITY_STYLE[severity])


def train_row(r: dict[str, Any], article_weight: float) -> list[Any]:
    return [
        f"{r['step']}/{r['max_steps']}",
        _num(r.get("epoch"), 2),
        _num(r.get("loss")),
        _num(r.get("loss_unweighted")),
        _num(r.get("ppl"), 1),
        _num(r.get("article_loss")),
        _num(r.get("other_loss")),
        ratio_text(r.get("ratio"), article_weight),
        _num(r.get("article_acc"), 3),
        f"{r['lr']:.2e}",
        _num(r.get("grad_norm"), 2),
        f"{r['tokens_per_s']:,.0f}",
        f"{100 * r['mfu']:.1f}%",
        _eta(r.get("eta_s")),
    ]


def val_row(r: dict[str, Any], article_weight: float) -> list[Any]:
    row: list[Any] = [""] * len(COLUMNS)
    row[0] = Text(f"val @{r['step']}", style="bold magenta")
    row[3], row[4], row[5], row[6] = (
        _num(r.get("loss_unweighted")),
        _num(r.get("ppl"), 1),
        _num(r.get("article_loss")),
        _num(r.get("other_loss")),
    )
    row[7], row[8] = ratio_text(r.get("ratio"), article_weight), _num(r.get("article_acc"), 3)
    corrected = f" · corrected {_num(r['bpb_corrected'])} (tau {r['tau']:.2f})" if "tau" in r else ""
    row[9] = Text(f"bpb {_num(r.get('bpb'))}{corrected}", style="magenta")
    return row


def plain_line(r: dict[str, Any], article_weight: float) -> str:
    if r["event"] == "val":
        return (
            f"val step {r['step']}: loss {_num(r.get('loss_unweighted'))} ppl {_num(r.get('ppl'), 1)} "
            f"bpb {_num(r.get('bpb'))} article {_num(r.get('article_loss'))} other {_num(r.get('other_loss'))} "
            f"article_acc {_num(r.get('article_acc'))}"
            + (f" · corrected bpb {_num(r['bpb_corrected'])} at tau {r['tau']:.3f}" if "tau" in r else "")
        )
    return (
        f"step {r['step']}/{r['max_steps']} epoch {_num(r.get('epoch'), 2)} loss {_num(r.get('loss'))} "
        f"unweighted {_num(r.get('loss_unweighted'))} article {_num(r.get('article_loss'))} "
        f"other {_num(r.get('other_loss'))} ratio {_num(r.get('ratio'), 2)} "
        f"({ratio_band(r.get('ratio'), article_weight)[0]}) "
        f"lr {r['lr']:.2e} grad {_num(r.get('grad_norm'), 2)} tok/s {r['tokens_per_s']:,.0f} ETA {_eta(r.get('eta_s'))}"
    )


class TrainingView:
    """The `emit` callback of the training loop, rendering to a console."""

    def __init__(self, console: Console, err: Console, live: bool, quiet: bool = False, max_rows: int = 14):
        self.console, self.err, self.quiet = console, err, quiet
        self.rows: deque[tuple[str, list[Any]]] = deque(maxlen=max_rows)
        self.header = Text("")
        self.warnings: deque[str] = deque(maxlen=3)
        self.article_weight = 1.0
        self.live = Live(console=console, refresh_per_second=4, transient=False) if live and not quiet else None

    def __enter__(self) -> TrainingView:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.stop()

    def _render(self) -> Group:
        table = Table(expand=False, header_style="bold", pad_edge=False)
        for column in COLUMNS:
            table.add_column(column, justify="right", no_wrap=True)
        for _, row in self.rows:
            table.add_row(*row)
        return Group(self.header, table, *(Text(f"warning: {w}", style="yellow") for w in self.warnings))

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if self.quiet:
            return
        if kind == "start":
            self.article_weight = event["article_weight"]
            self.header = Text(
                f"{event['parameters']:,} parameters · {event['device']} {event['dtype']} · world {event['world']} · "
                f"{event['train_tokens']:,} train / {event['val_tokens']:,} val tokens · "
                f"{event['tokens_per_step']:,} tokens/step · article weight {event['article_weight']:g} on "
                f"{len(event['article_ids'])} IDs",
                style="bold",
            )
            if not self.live:
                self.console.print(self.header)
        elif kind == "tokenize":
            if event["done"] == event["total"]:
                self.err.print(f"tokenized {event['split']}: {event['total']:,} stories")
        elif kind in ("train", "val"):
            row = train_row if kind == "train" else val_row
            self.rows.append((kind, row(event, self.article_weight)))
            if not self.live:
                self.console.print(plain_line(event, self.article_weight), highlight=False)
        elif kind == "warning":
            self.warnings.append(f"step {event['step']}: {event['message']}")
            self.err.print(f"[yellow]warning:[/yellow] step {event['step']}: {event['message']}")
        elif kind in ("checkpoint", "resumed") and not self.live:
            self.err.print(f"{kind}: step {event['step']} → {event['path']}")
        if self.live:
            self.live.update(self._render())
