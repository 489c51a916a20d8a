"""`tstool generate`: sample continuations from a checkpoint and optionally score their articles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import correction_for_model, parse_correction_option
from tstool.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


@handle_errors
def generate(
    checkpoint: options.Checkpoint,
    prompts: Annotated[
        Optional[list[str]],
        typer.Option("--prompt", "-p", help="Prompt text, repeatable \\[default: five TinyStories openings]."),
    ] = None,
    prompts_file: Annotated[
        Optional[Path], typer.Option("--prompts-file", help="Text file with one prompt per line.")
    ] = None,
    num_samples: Annotated[
        Optional[int], typer.Option("--num-samples", "-n", help="Samples per prompt \\[default: the run's config].")
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option("--max-new-tokens", help="Tokens to generate per sample \\[default: the run's config]."),
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option("--temperature", help="Sampling temperature; 0 is greedy \\[default: the run's config]."),
    ] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample from the k most likely tokens only.")] = None,
    top_p: Annotated[
        Optional[float], typer.Option("--top-p", help="Nucleus sampling: the most likely tokens holding this mass.")
    ] = None,
    repetition_penalty: Annotated[
        Optional[float],
        typer.Option("--repetition-penalty", help="CTRL penalty on tokens already in prompt or output (1 = off)."),
    ] = None,
    greedy: Annotated[
        bool, typer.Option("--greedy", help="Always take the most likely token (temperature 0).")
    ] = False,
    seed: Annotated[
        Optional[int], typer.Option("--seed", help="Sampling seed: same seed, same text \\[default: random, reported].")
    ] = None,
    score_articles: Annotated[
        bool, typer.Option("--score-articles", help="Score article use in the continuations against the corpus.")
    ] = False,
    stats_file: Annotated[
        Optional[Path],
        typer.Option(
            "--stats",
            help="Corpus statistics from `tstool dataset-stats --out` to score against (implies --score-articles) "
            "\\[default: the run's training data, computed once and cached].",
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    correction: options.Correction = "fitted",
    tokenizer: options.RunTokenizer = None,
    json_out: options.Json = False,
) -> None:
    """Generate stories from a model. Example: tstool generate -c runs/latest -p "Once upon" --score-articles

    A tstool run or checkpoint, or a transformers model (folder or hub id), scored against its training data
    (a transformers model: the bundled TinyStories sample).

    With --score-articles and no prompts, the prompts are openings of held-out validation stories and the
    reference is how those stories go on. The rate gets a verdict only at temperature 1 with no top-k, top-p
    or repetition penalty (e.g. --temperature 1).
    """
    import secrets

    from tstool.analysis.calibration import logit_bias
    from tstool.analysis.generate import DEFAULT_PROMPTS, generate_samples, read_prompts, sampling_settings
    from tstool.analysis.scoring import (
        MATCHED_PROMPTS,
        CorpusReference,
        held_out_openings,
        matched_reference,
        reference_for_run,
        score_samples,
    )
    from tstool.model.loading import load_any_model
    from tstool.training.runtime import resolve_device
    from tstool.ui.generation import render_samples
    from tstool.ui.reports import progress_bar

    if device not in DEVICES:
        raise ConfigError(f"--device {device!r} is unknown: use one of {', '.join(DEVICES)}")
    out = Output(json_out)
    bars = not json_out and out.err.is_terminal
    choice = parse_correction_option(correction)
    given = [*(prompts or []), *(read_prompts(prompts_file) if prompts_file else [])]
    reference = CorpusReference.load(stats_file) if stats_file else None
    scoring = score_articles or reference is not None
    loaded = load_any_model(checkpoint, resolve_device(device), tokenizer)
    applied = correction_for_model(loaded, choice)
    openings = held_out_openings(loaded, MATCHED_PROMPTS) if scoring and not given else []
    texts = given or [o.prompt for o in openings] or list(DEFAULT_PROMPTS)
    settings = sampling_settings(
        loaded.config.generate,
        greedy=greedy,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )
    if settings.temperature == 0 and settings.num_samples > 1:
        out.warn(f"greedy decoding makes all {settings.num_samples} samples of a prompt the same")
    seed = secrets.randbelow(2**31) if seed is None else seed
    out.status(f"Model: {loaded.describe()} on {loaded.device} · seed {seed} · correction: {applied.describe()}")
    with progress_bar(out.err, f"Generating from {len(texts)} prompts", enabled=bars) as progress:
        samples = generate_samples(loaded, texts, settings, seed, progress, logit_bias(loaded, applied))
    warnings = list(dict.fromkeys(w for s in samples for w in s.warnings))
    for warning in warnings:
        out.warn(warning)

    score = None
    if scoring:
        if reference is None:
            description = "Corpus statistics of the training data (once; cached after)"
            with progress_bar(out.err, description, enabled=bars) as progress:
                reference, computed = reference_for_run(loaded, progress)
            if computed:
                out.status(f"Cached corpus statistics in {reference.source}")
        if openings:
            reference = matched_reference(reference, openings)
        score = score_samples(samples, reference, settings)

    result = {
        "checkpoint": str(loaded.path),
        "origin": loaded.origin,
        "step": loaded.step,  # the step read: a run still training may have moved on since
        "device": str(loaded.device),
        "seed": seed,
        "correction": applied.to_dict(),
        "settings": settings.model_dump() | {"greedy": settings.temperature == 0},
        "warnings": warnings,
        "samples": [
            s.to_dict() | ({"articles": score.samples[i].to_dict()} if score is not None else {})
            for i, s in enumerate(samples)
        ],
    }
    if score is not None:
        result["score"] = score.to_dict()
    out.emit(result, lambda console: render_samples(console, samples, score))
