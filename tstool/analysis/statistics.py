"""Intervals for a seeded A/B of small models: across seeds, and for generated text across seeds and
prompts (a crossed bootstrap: every seed continues the same prompts), with the verdict an interval
supports."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Two-sided 95% quantiles of Student's t by degrees of freedom (1-30); beyond, the normal's 1.96.
T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
BOOTSTRAP_ROUNDS = 2000

# Per-story counts of generated text: (articles, words) of each continuation.
StoryCounts = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval (None when one seed leaves no spread to measure)."""

    mean: float
    low: float | None
    high: float | None
    n: int  # samples: seeds, or the shift probe's blocks

    def covers(self, value: float) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= value <= self.high

    def to_dict(self, unit: str = "seeds") -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, unit: self.n}

    def text(self, fmt: str = ".3f") -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:{fmt}}"
        return f"{self.mean:{fmt}} ({self.low:{fmt}} to {self.high:{fmt}})"


def t_interval(values: Sequence[float]) -> Estimate:
    """Mean of per-seed values and its 95% Student-t interval."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean, None, None, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = (T95[n - 2] if n - 1 <= len(T95) else 1.96) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def rate(stories: StoryCounts) -> float:
    """Articles per 100 words, pooled over stories."""
    words = sum(w for _, w in stories)
    return 100.0 * sum(a for a, _ in stories) / words if words else 0.0


def _picks(seeds: Sequence[StoryCounts], rng: random.Random) -> tuple[list[int], list[int]]:
    """One bootstrap draw: seeds with replacement, and prompts with replacement. Every seed continues the
    same prompts, so seeds and prompts are crossed, not nested: one draw of prompts serves every drawn
    seed (drawing prompts afresh per seed would average a prompt's own effect away as seeds are added)."""
    prompts = len(seeds[0])
    if any(len(s) != prompts for s in seeds):
        raise ValueError("every seed must continue the same prompts")
    return [rng.randrange(len(seeds)) for _ in seeds], [rng.randrange(prompts) for _ in range(prompts)]


def _percentile_estimate(point: float, draws: list[float], n: int) -> Estimate:
    draws.sort()
    return Estimate(point, draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1], n)


def bootstrap_rate(seeds: Sequence[StoryCounts], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> Estimate:
    """The mean over seeds of the generated article rate, with a 95% interval resampling seeds and
    prompts (`_picks`)."""
    point = math.fsum(rate(s) for s in seeds) / len(seeds)
    rng = random.Random(seed)
    draws = []
    for _ in range(rounds):
        seed_picks, picks = _picks(seeds, rng)
        draws.append(math.fsum(rate([seeds[s][i] for i in picks]) for s in seed_picks) / len(seeds))
    return _percentile_estimate(point, draws, len(seeds))


def bootstrap_rate_difference(
    arm: Sequence[StoryCounts], base: Sequence[StoryCounts], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> Estimate:
    """The mean paired difference of generated article rates (arm minus base, seed by seed), with a 95%
    interval; seeds and prompts are resampled jointly on both sides (`_picks`), since both share them.
    A base that is the same on every seed (the stories' own rests) is resampled with the same prompts."""
    if len(arm) != len(base) or any(len(a) != len(b) for a, b in zip(arm, base, strict=True)):
        raise ValueError("paired rates need the same seeds and the same prompts on both sides")
    point = math.fsum(rate(a) - rate(b) for a, b in zip(arm, base, strict=True)) / len(arm)
    rng = random.Random(seed)
    draws = []
    for _ in range(rounds):
        seed_picks, picks = _picks(arm, rng)
        total = math.fsum(rate([arm[s][i] for i in picks]) - rate([base[s][i] for i in picks]) for s in seed_picks)
        draws.append(total / len(arm))
    return _percentile_estimate(point, draws, len(arm))


def direction(difference: Estimate, lower_is_better: bool | None = None) -> str:
    """The verdict of a difference's interval: higher, lower, or no clear difference when it covers zero;
    with `lower_is_better`, better or worse instead. One seed gives no interval: "one seed: no interval"."""
    covers = difference.covers(0.0)
    if covers is None:
        return "one seed: no interval"
    if covers:
        return "no clear difference"
    higher = difference.mean > 0
    if lower_is_better is None:
        return "higher" if higher else "lower"
    return "worse" if higher == lower_is_better else "better"
