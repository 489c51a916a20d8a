"""`tstool export-hf`: write a checkpoint as a Hugging Face Llama folder (transformers loads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output


@handle_errors
def export_hf(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", "-c", help="Run folder (its latest checkpoint) or a checkpoint folder.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write: config.json, model.safetensors, tokenizer.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
    tokenizer: Annotated[
        Optional[Path],
        typer.Option("--tokenizer", help="The run's tokenizer.json, when it is not next to the checkpoint."),
    ] = None,
    json_out: options.Json = False,
) -> None:
    """Export for transformers' LlamaForCausalLM. Example: tstool export-hf -c runs/latest --out hf/tiny"""
    from tstool.hf_export import export_hf as export

    result = export(checkpoint, out, overwrite=overwrite, tokenizer=tokenizer)
    document = {
        "out": str(result.path),
        "checkpoint": str(result.checkpoint),
        "step": result.step,
        "files": result.files,
        "config": result.config,
    }
    Output(json_out).emit(
        document,
        lambda console: console.print(
            f"[bold green]exported[/] step {result.step} of {result.checkpoint} → {result.path} "
            f"({', '.join(result.files)})\nload it with LlamaForCausalLM.from_pretrained({str(result.path)!r})"
        ),
    )
