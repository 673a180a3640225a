"""The `cxrseg predict` command: flags to settings, a progress bar and a summary around predict_paths."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cxrseg.cli.common import console, flag_settings, progress_bar, stdout
from cxrseg.config import Backend, Device

if TYPE_CHECKING:
    from cxrseg.inference.predict import PredictResult

MAX_SHOWN = 10


def predict(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (must not be an input folder).")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Argument(metavar="INPUT", help="X-ray files, folders or glob patterns (PNG, JPEG, TIFF, BMP, DICOM)."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint (.safetensors or .onnx); default: newest run's best, else bundled.")
    ] = None,
    sample: Annotated[bool, typer.Option("--sample", help="Add the sample X-rays shipped with cxrseg.")] = False,
    runs_dir: Annotated[Path | None, typer.Option(help="Where to look for the newest run's checkpoint.")] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also read subfolders of input folders.")
    ] = False,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write <name>.overlay.png.")] = True,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Write <name>.prob.png (probability x 255).")
    ] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Resume: keep inputs done by a previous run into --out.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Also write predictions.json and print the rows as JSON.")
    ] = False,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average with a flipped prediction.")] = None,
    postprocess: Annotated[
        bool | None, typer.Option("--postprocess/--no-postprocess", help="Keep 2 largest parts, fill holes.")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Lung probability threshold (default 0.5).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass.")] = None,
    device: Annotated[Device | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoding and writing threads (default: up to 4).")] = None,
    backend: Annotated[Backend | None, typer.Option(help="torch, onnxruntime (CPU) or auto.")] = None,
    shard: Annotated[str | None, typer.Option(help="K/N: do only shard K of N; writes predictions.K-of-N.csv.")] = None,
    merge: Annotated[
        Path | None, typer.Option(help="Merge the finished shards in this folder into predictions.csv.")
    ] = None,
) -> None:
    """Segment lungs; writes masks, overlays and predictions.csv. Exit code 1 when any input failed.

    Under torchrun, each rank does its own shard (one GPU per rank on CUDA) and rank 0 merges the table.
    """
    import torch

    from cxrseg.checkpoint import default_checkpoint
    from cxrseg.inference.predict import PredictOptions, predict_paths, sample_inputs
    from cxrseg.inference.shard import Shard, barrier_then_merge, merge_shards, parse_shard
    from cxrseg.training.distributed import from_torchrun

    if merge is not None:
        _report_merge(*merge_shards(merge))
        return
    if out is None:
        raise typer.BadParameter("give the output folder", param_hint="--out")
    if not inputs and not sample:
        raise typer.BadParameter("give X-ray files or folders, or --sample", param_hint="INPUT")
    ranks = from_torchrun(os.environ)
    if ranks.enabled and shard:
        raise typer.BadParameter("under torchrun each rank takes its own shard; drop --shard", param_hint="--shard")
    part = Shard(ranks.rank + 1, ranks.world_size) if ranks.enabled else parse_shard(shard or "1/1")
    settings = flag_settings(
        ctx,
        {
            "train": {"runs_dir": runs_dir},
            "inference": {
                "tta": tta,
                "postprocess": postprocess,
                "threshold": threshold,
                "batch_size": batch_size,
                "device": device,
                "backend": backend,
            },
        },
    )
    if ranks.enabled and settings.inference.device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank)  # one GPU per rank: "cuda" now means this rank's GPU
    if checkpoint is None:
        checkpoint, why = default_checkpoint(settings.train.runs_dir)
        console.print(why, markup=False, highlight=False)
    paths: list[str | Path] = [*(inputs or []), *(sample_inputs() if sample else [])]
    options = PredictOptions(
        recursive=recursive,
        overlay=overlay,
        probabilities=probabilities,
        skip_existing=skip_existing,
        write_json=as_json,
        shard=part,
        **({"workers": workers} if workers else {}),
    )
    progress = progress_bar()  # started once the inputs are found and the output folder is accepted
    task = progress.add_task("predict", total=None, info="")

    def on_start(total: int, kept: int) -> None:
        progress.update(task, total=total, completed=kept)
        progress.start()

    def on_advance(count: int, images_per_s: float) -> None:
        progress.update(task, advance=count, info=f"{images_per_s:.1f} img/s")

    try:
        result = predict_paths(paths, out, checkpoint, settings.inference, options, on_start, on_advance)
    finally:
        progress.stop()
    _summarize(result)
    if as_json:
        stdout.print_json(json.dumps(result.rows))
    failed = result.failed
    if ranks.enabled:
        merged = barrier_then_merge(out, part)
        if merged is None:
            return  # rank 0 reports the merged table and the exit code
        _report_merge(*merged)
        failed = merged[2]
    if failed:
        raise typer.Exit(1)


def _report_merge(path: Path, rows: int, failed: int) -> None:
    colour = "red" if failed else "green"
    console.print(
        f"[{colour}]Merged {rows} rows, {failed} failed[/{colour}] into {escape(str(path))}",
        highlight=False,
        soft_wrap=True,
    )


def _summarize(result: PredictResult) -> None:
    failed = [row for row in result.rows if row["status"] != "ok"]
    flagged = sum(bool(row.get("flags")) for row in result.rows if row["status"] == "ok")
    for row in failed[:MAX_SHOWN]:
        console.print(f"[red]failed:[/red] {escape(row['message'])}", highlight=False, soft_wrap=True)
    if len(failed) > MAX_SHOWN:
        console.print(f"[red]... and {len(failed) - MAX_SHOWN} more failed inputs[/red] (status column of the CSV)")
    if result.ignored:
        shown = escape(", ".join(str(p) for p in result.ignored[:MAX_SHOWN]))
        more = f" and {len(result.ignored) - MAX_SHOWN} more" if len(result.ignored) > MAX_SHOWN else ""
        console.print(f"Ignored {len(result.ignored)} files that are not X-rays: {shown}{more}", highlight=False)
    kept = f", {result.skipped} kept from the previous run" if result.skipped else ""
    colour = "red" if failed else "green"
    console.print(
        f"[{colour}]{len(result.rows) - len(failed)} ok, {len(failed)} failed[/{colour}]{kept}; "
        f"{flagged} with quality flags; {result.images_per_s:.1f} img/s. Table: {escape(str(result.csv_path))}",
        highlight=False,
        soft_wrap=True,
    )
