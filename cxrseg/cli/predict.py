"""The `cxrseg predict` command: flags to settings, a progress bar and a summary around predict_paths."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from cxrseg.cli.common import (
    MAX_SHOWN,
    BackendOption,
    BatchSizeOption,
    CheckpointOption,
    ConfigOption,
    DeviceOption,
    KeepByOption,
    PostprocessOption,
    RunsDirOption,
    TrimOption,
    TtaOption,
    chosen_checkpoint,
    console,
    flag_settings,
    print_failures,
    progress_bar,
    require_paths,
    stdout,
)
from cxrseg.cli.options import option

if TYPE_CHECKING:
    from cxrseg.inference.predict import PredictOptions, PredictResult
    from cxrseg.inference.shard import Shard

OUTPUT = "Output"

Inputs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="INPUT",
        help="X-ray files, folders or quoted glob patterns (PNG, JPEG, TIFF, BMP, DICOM).",
        show_default=False,
    ),
]
Out = Annotated[
    Path | None,
    option(
        "--out", "-o", help="Output folder, not an input folder.", default="none, required unless --merge", panel=OUTPUT
    ),
]


def _flag(name: str, help: str, short: str | None = None, panel: str | None = None) -> Any:  # noqa: A002
    names = (name, short) if short else (name,)
    return option(*names, help=help, default=False, flag=True, panel=panel)


Sample = Annotated[bool, _flag("--sample", "Add the sample X-rays shipped with cxrseg.")]
Recursive = Annotated[bool, _flag("--recursive", "Also read subfolders of input folders.", "-r")]
Overlay = Annotated[
    bool, option("--overlay/--no-overlay", help="Write <name>.overlay.jpg.", default=True, flag=True, panel=OUTPUT)
]
Probabilities = Annotated[bool, _flag("--probabilities", "Write <name>.prob.png (probability x 255).", panel=OUTPUT)]
SkipExisting = Annotated[
    bool, _flag("--skip-existing", "Resume: keep inputs done by a previous run into --out.", panel=OUTPUT)
]
AsJson = Annotated[bool, _flag("--json", "Also write predictions.json and print the rows as JSON.", panel=OUTPUT)]
Report = Annotated[
    bool,
    _flag(
        "--report",
        "Also write report.html: gallery, flags and errors for review (of the merged table with --merge; "
        "not with --shard).",
        panel=OUTPUT,
    ),
]
Threshold = Annotated[float | None, option(help="Lung probability threshold.", setting="inference.threshold")]
Workers = Annotated[int | None, option(min=1, help="Decoding and writing processes.", default="one per core, up to 4")]
ShardOption = Annotated[
    str | None, option(help="K/N: do only shard K of N; writes predictions.K-of-N.csv.", default="1/1")
]
Merge = Annotated[
    Path | None, option(help="Merge the finished shards in this folder into predictions.csv.", default="none")
]


def predict(
    ctx: typer.Context,
    inputs: Inputs = None,
    out: Out = None,
    checkpoint: CheckpointOption = None,
    sample: Sample = False,
    recursive: Recursive = False,
    overlay: Overlay = True,
    probabilities: Probabilities = False,
    skip_existing: SkipExisting = False,
    as_json: AsJson = False,
    report: Report = False,
    tta: TtaOption = None,
    trim_border: TrimOption = None,
    keep_by: KeepByOption = None,
    postprocess: PostprocessOption = None,
    threshold: Threshold = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
    backend: BackendOption = None,
    workers: Workers = None,
    runs_dir: RunsDirOption = None,
    shard: ShardOption = None,
    merge: Merge = None,
    config: ConfigOption = None,
) -> None:
    """Segment lungs; writes masks, overlays and predictions.csv.

    Exit code 0 when every input is ok, 1 when any input failed, 2 for wrong usage (a missing INPUT, --out an
    input folder). Under torchrun, each rank does its own shard (one GPU per rank on CUDA) and rank 0 merges the
    table.
    """
    from cxrseg.inference.predict import PredictOptions, sample_inputs
    from cxrseg.inference.shard import merge_shards

    if merge is not None:
        merged = merge_shards(merge)
        _report_merge(*merged)
        if report:
            _write_merged_report(merge, merged[0])
        return
    _check_usage(inputs, out, sample, recursive, checkpoint)
    assert out is not None  # _check_usage refused it
    inference = {
        "trim_border": trim_border,
        "keep_by": keep_by,
        "tta": tta,
        "postprocess": postprocess,
        "threshold": threshold,
        "batch_size": batch_size,
    }
    inference |= {"device": device, "backend": backend}
    settings = flag_settings(ctx, {"train": {"runs_dir": runs_dir}, "inference": inference}, config)
    part, ranks = _shard(shard, settings.inference.device)
    if report and part.enabled and not ranks.enabled:
        raise typer.BadParameter(
            "a shard's report would show only its own inputs; once every shard is done, run "
            f"`cxrseg predict --merge {out} --report` for the report of them all",
            param_hint="--report",
        )
    checkpoint = chosen_checkpoint(checkpoint, settings.train.runs_dir)
    paths: list[str | Path] = [*(inputs or []), *(sample_inputs() if sample else [])]
    flags = {"recursive": recursive, "overlay": overlay, "probabilities": probabilities, "write_json": as_json}
    flags |= {"skip_existing": skip_existing, "shard": part} | ({"workers": workers} if workers else {})
    result = _run(paths, out, checkpoint, settings.inference, PredictOptions(**flags))
    _summarize(result)
    if report and not ranks.enabled:  # under torchrun, rank 0 writes it from the merged table
        _write_report(out, result.rows)
    if as_json:
        stdout.print_json(json.dumps(result.rows))
    _finish(result.failed, out, part, ranks.enabled, report)


def _write_report(out: Path, rows: list[dict]) -> None:
    from cxrseg.report import write_predict_report

    console.print(f"Report: {write_predict_report(out, rows)}", markup=False, highlight=False, soft_wrap=True)


def _write_merged_report(out: Path, table: Path) -> None:
    """The report of every shard's inputs, from the merged predictions.csv."""
    from cxrseg.errors import DataError
    from cxrseg.inference.table import read_table

    rows = read_table(table, "run the shards again")
    if None in rows:
        raise DataError(f"{table} holds rows this version of cxrseg cannot read; run the shards again with it.")
    _write_report(out, [row for row in rows if row is not None])


def _check_usage(
    inputs: list[str] | None, out: Path | None, sample: bool, recursive: bool, checkpoint: Path | None
) -> None:
    """Wrong usage stops here, exit code 2, before a model is loaded or a bar drawn."""
    from cxrseg.errors import InputPathError
    from cxrseg.inputs import check_out_folder, missing_inputs, pattern_trees

    if out is None:
        raise typer.BadParameter("give the output folder", param_hint="--out")
    if not inputs and not sample:
        raise typer.BadParameter("give X-ray files or folders, or --sample", param_hint="INPUT")
    missing = missing_inputs(inputs or [])
    if missing:
        shown = ", ".join(missing[:MAX_SHOWN]) + (
            f" and {len(missing) - MAX_SHOWN} more" if len(missing) > MAX_SHOWN else ""
        )
        raise InputPathError(f"INPUT {shown}: no such file or folder, or no file matches the pattern; check the path.")
    check_out_folder(out, [Path(text) for text in inputs or [] if Path(text).is_dir()], recursive)
    check_out_folder(out, pattern_trees(inputs or []), recursive=True)
    require_paths(checkpoint, "--checkpoint", "pass a .safetensors or .onnx file")


def _shard(shard: str | None, device: str) -> tuple[Shard, Any]:
    """This process's shard: --shard K/N, or under torchrun the rank's own (one GPU per rank on CUDA)."""
    import torch

    from cxrseg.inference.shard import Shard, parse_shard
    from cxrseg.training.distributed import from_torchrun

    ranks = from_torchrun(os.environ)
    if ranks.enabled and shard:
        raise typer.BadParameter("under torchrun each rank takes its own shard; drop --shard", param_hint="--shard")
    if ranks.enabled and device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank)  # one GPU per rank: "cuda" now means this rank's GPU
    part = Shard(ranks.rank + 1, ranks.world_size) if ranks.enabled else parse_shard(shard or "1/1")
    return part, ranks


def _run(
    paths: list[str | Path], out: Path, checkpoint: Path, inference: Any, options: PredictOptions
) -> PredictResult:
    """predict_paths with a bar, started once the inputs are found and the output folder is accepted.

    Ctrl-C and SIGTERM stop it alike: the rows of the inputs written are saved, then Interrupted (130 / 143).
    """
    from cxrseg.errors import Interrupted
    from cxrseg.inference.predict import predict_paths
    from cxrseg.signals import sigterm_raises

    progress = progress_bar()
    task = progress.add_task("predict", total=None, info="")

    def on_start(total: int, kept: int) -> None:
        progress.update(task, total=total, completed=kept)
        progress.start()

    def on_advance(count: int, images_per_s: float) -> None:
        progress.update(task, advance=count, info=f"{images_per_s:.1f} img/s")

    with sigterm_raises(lambda: Interrupted(exit_code=143)) as stop:
        try:
            return predict_paths(paths, out, checkpoint, inference, options, on_start, on_advance)
        except BaseException as exc:
            # also an error from a worker the same SIGTERM ended (sent to the whole process group)
            if stop["signal"] or isinstance(exc, KeyboardInterrupt):
                raise _interrupted(bool(stop["signal"]), out / options.shard.csv_name()) from exc
            raise
        finally:
            progress.stop()


def _interrupted(by_sigterm: bool, table: Path) -> Exception:
    from cxrseg.errors import Interrupted

    kept = f" The inputs done so far are in {table}; add --skip-existing to resume." if table.is_file() else ""
    return Interrupted(f"{'SIGTERM' if by_sigterm else 'Ctrl-C'}.{kept}", 143 if by_sigterm else 130)


def _finish(failed: int, out: Path, part: Shard, distributed: bool, report: bool = False) -> None:
    """Under torchrun rank 0 merges the shards and reports (and writes the report of the merged table, with
    `report`); exit code 1 when any input failed."""
    from cxrseg.inference.shard import barrier_then_merge

    if distributed:
        merged = barrier_then_merge(out, part)
        if merged is None:
            return  # rank 0 reports the merged table and the exit code
        _report_merge(*merged)
        if report:
            _write_merged_report(out, merged[0])
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
    print_failures([row["message"] for row in failed], "failed inputs[/red] (status column of the CSV)")
    if result.ignored:
        shown = escape(", ".join(str(p) for p in result.ignored[:MAX_SHOWN]))
        more = f" and {len(result.ignored) - MAX_SHOWN} more" if len(result.ignored) > MAX_SHOWN else ""
        what = "file that is not an X-ray" if len(result.ignored) == 1 else "files that are not X-rays"
        console.print(f"Ignored {len(result.ignored)} {what}: {shown}{more}", highlight=False)
    kept = f", {result.skipped} kept from the previous run" if result.skipped else ""
    colour = "red" if failed else "green"
    console.print(
        f"[{colour}]{len(result.rows) - len(failed)} ok, {len(failed)} failed[/{colour}]{kept}; "
        f"{flagged} with quality flags; {result.images_per_s:.1f} img/s. Table: {escape(str(result.csv_path))}",
        highlight=False,
        soft_wrap=True,
    )
