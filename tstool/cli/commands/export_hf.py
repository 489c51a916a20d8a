"""`tstool export-hf`: write a checkpoint as a Hugging Face Llama folder (transformers loads it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tstool.cli import options
from tstool.cli.funnel import handle_errors
from tstool.cli.output import Output


@handle_errors
def export_hf(
    checkpoint: options.Checkpoint,
    out: Annotated[Path, typer.Option("--out", help="Folder to write: config.json, model.safetensors, tokenizer.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
    tokenizer: options.RunTokenizer = None,
    json_out: options.Json = False,
) -> None:
    """Export for transformers' LlamaForCausalLM. Example: tstool export-hf -c runs/latest --out hf/tiny"""
    from tstool.model.hf_export import export_hf as export

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
