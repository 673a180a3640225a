"""`cxrseg evaluate`: score a checkpoint on a dataset split and print a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxrseg.cli.common import console, flag_settings, progress_bar, stdout
from cxrseg.config import Backend, Device
from cxrseg.dataset import Split


def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint (.safetensors or .onnx); default: newest run's best, else bundled.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset folder (default: the folder(s) the checkpoint was trained on, else data.root)."),
    ] = None,
    split: Annotated[
        Split | None,
        typer.Option(help="test, val, train or all; default test when the folder has test_image/, else val."),
    ] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Where to look for the newest run.")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="Write per-image rows to this CSV file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average with a flipped prediction.")] = None,
    postprocess: Annotated[bool | None, typer.Option("--postprocess/--no-postprocess", help="Clean masks.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass.")] = None,
    device: Annotated[Device | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    backend: Annotated[Backend | None, typer.Option(help="torch, onnxruntime (CPU) or auto.")] = None,
) -> None:
    """Score a checkpoint: Dice, IoU, precision, recall, HD95, ASSD per image at the mask's own resolution."""
    from cxrseg.assets import BUNDLED_MODEL
    from cxrseg.checkpoint import default_checkpoint
    from cxrseg.dataset import default_split, select_pairs
    from cxrseg.inference.backend import load_model
    from cxrseg.inference.evaluate import evaluate_model, write_csv
    from cxrseg.metrics import DISTANCE_METRICS

    if csv is not None and csv.is_dir():  # found before the evaluation, not after it
        example = csv / "scores.csv"
        raise typer.BadParameter(f"{csv} is a folder; give a file name such as {example}", param_hint="--csv")
    settings = flag_settings(
        ctx,
        {
            "data": {"root": [data] if data else None},
            "train": {"runs_dir": runs_dir},
            "inference": {
                "tta": tta,
                "postprocess": postprocess,
                "batch_size": batch_size,
                "device": device,
                "backend": backend,
            },
        },
    )
    if checkpoint is None:
        checkpoint, why = default_checkpoint(settings.train.runs_dir)
        console.print(why, markup=False, highlight=False)
    model, info = load_model(checkpoint, settings.inference)
    # the checkpoint's own split rule, so a seeded split never scores images the model was trained on
    trained = info.settings.data
    roots = settings.data.root
    if data is None and checkpoint.resolve() != BUNDLED_MODEL.resolve() and trained.root != roots:
        roots = trained.root
        console.print(f"Data: {', '.join(map(str, roots))}, the folder(s) the checkpoint was trained on", markup=False)
    pairs = []
    for root in roots:
        chosen = split or default_split(root)
        pairs += select_pairs(root, chosen, trained.val_fraction, trained.split_seed)
    split = split or default_split(roots[0])
    with progress_bar() as progress:
        task = progress.add_task("evaluate", total=len(pairs), info="")
        result = evaluate_model(
            model, info.settings, pairs, settings.inference, on_advance=lambda n: progress.advance(task, n)
        )
    if csv:
        write_csv(result, csv)
        console.print(f"Per-image scores written to {csv}")
    if as_json:
        stdout.print_json(json.dumps(result.as_json() | {"checkpoint": str(checkpoint), "split": split}))
        return
    stdout.print(f"Checkpoint {checkpoint}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"{len(result.rows)} images, split '{split}'")
    for column in ("metric", "mean", "sd", "median", "n"):
        table.add_column(column, justify="right")
    for name, stats in result.summary.items():
        distance = name in DISTANCE_METRICS
        digits = 2 if distance else 4
        table.add_row(
            name + (" (px)" if distance else ""),
            f"{stats['mean']:.{digits}f}",
            f"{stats['sd']:.{digits}f}",
            f"{stats['median']:.{digits}f}",
            str(stats["n"]),
        )
    stdout.print(table)
