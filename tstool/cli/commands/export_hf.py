"""`tstool export-hf`: write a checkpoint as a Hugging Face Llama folder (transformers loads it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output
from tstool.cli.setup import correction_for_model, parse_correction_option

if TYPE_CHECKING:
    import torch


@handle_errors
def export_hf(
    checkpoint: options.Checkpoint,
    out: Annotated[Path, typer.Option("--out", help="Folder to write: config.json, model.safetensors, tokenizer.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
    tokenizer: options.RunTokenizer = None,
    correction: options.Correction = "fitted",
    json_out: options.Json = False,
) -> None:
    """Export for transformers' LlamaForCausalLM. Example: tstool export-hf -c runs/latest --out hf/tiny

    A weighted model's post-hoc correction goes into generation_config.json as a sequence bias, so that
    transformers' generate() samples the corrected distribution.
    """
    from tstool.analysis.calibration import Correction, logit_bias
    from tstool.model.hf_export import export_hf as export
    from tstool.model.loading import LoadedModel

    choice = parse_correction_option(correction)
    applied: list[Correction] = []

    def bias_of(loaded: LoadedModel) -> torch.Tensor | None:
        applied.append(correction_for_model(loaded, choice))
        return logit_bias(loaded, applied[0])

    result = export(checkpoint, out, overwrite=overwrite, tokenizer=tokenizer, correction=bias_of)
    document = {
        "out": str(result.path),
        "checkpoint": str(result.checkpoint),
        "step": result.step,
        "files": result.files,
        "config": result.config,
        "correction": applied[0].to_dict(),
        "sequence_bias": result.sequence_bias,
    }
    Output(json_out).emit(
        document,
        lambda console: console.print(
            f"[bold green]exported[/] step {result.step} of {result.checkpoint} → {result.path} "
            f"({', '.join(result.files)})\ncorrection in generation_config.json: {applied[0].describe()}\n"
            f"load it with LlamaForCausalLM.from_pretrained({str(result.path)!r})"
        ),
    )
