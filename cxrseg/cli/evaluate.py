"""`cxrseg evaluate`: score a checkpoint on a dataset split and print a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxrseg.cli.common import (
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
    say,
    stdout,
)
from cxrseg.cli.options import option
from cxrseg.dataset import Split

if TYPE_CHECKING:
    from cxrseg.checkpoint import CheckpointInfo
    from cxrseg.config import Settings
    from cxrseg.dataset import Pair
    from cxrseg.inference.evaluate import Evaluation

DataOption = Annotated[
    Path | None,
    option(
        help="Dataset folder with image/ mask/ [test_image/ test_mask/].",
        default="the folder(s) the checkpoint was trained on, else data.root",
    ),
]
SampleOption = Annotated[
    bool,
    option(
        "--sample",
        help="Score on the sample shipped with cxrseg (24 pairs, none seen by the bundled model): --data its folder.",
        default=False,
        flag=True,
    ),
]
SplitOption = Annotated[
    Split | None, option(help="Which pairs to score.", default="test when the folder has test_image/, else val")
]

CsvOption = Annotated[Path | None, option("--csv", help="Write per-image rows to this CSV file.", default="none")]
JsonOption = Annotated[
    bool, option("--json", help="Print one JSON object instead of a table.", default=False, flag=True)
]
ReportOption = Annotated[
    Path | None,
    option("--report", help="Write an HTML review report (error maps, worst first) here.", default="none"),
]
SpacingOption = Annotated[
    str | None,
    option(
        help="Pixel spacing of the masks in mm, 'MM' or 'ROW,COL': HD95 and ASSD in mm instead of px.",
        default="none (px)",
    ),
]


def evaluate(
    ctx: typer.Context,
    checkpoint: CheckpointOption = None,
    data: DataOption = None,
    sample: SampleOption = False,
    split: SplitOption = None,
    runs_dir: RunsDirOption = None,
    csv: CsvOption = None,
    as_json: JsonOption = False,
    report: ReportOption = None,
    spacing: SpacingOption = None,
    tta: TtaOption = None,
    trim_border: TrimOption = None,
    keep_by: KeepByOption = None,
    postprocess: PostprocessOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
    backend: BackendOption = None,
    config: ConfigOption = None,
) -> None:
    """Score a checkpoint: Dice, IoU, precision, recall, HD95, ASSD per image at the mask's own resolution."""
    from cxrseg.errors import Interrupted
    from cxrseg.inference.backend import load_model
    from cxrseg.inference.evaluate import evaluate_model, write_csv
    from cxrseg.report import ErrorMaps, write_evaluate_report
    from cxrseg.signals import sigterm_raises

    if csv is not None and csv.is_dir():  # found before the evaluation, not after it
        example = csv / "scores.csv"
        raise typer.BadParameter(f"{csv} is a folder; give a file name such as {example}", param_hint="--csv")
    require_paths(checkpoint, "--checkpoint", "pass a .safetensors or .onnx file")
    require_paths(data, "--data", "pass a dataset folder with image/ and mask/")
    if sample:
        if data is not None:
            raise typer.BadParameter("give --data or --sample, not both", param_hint="--sample")
        from cxrseg.assets import SAMPLE_DIR

        data = SAMPLE_DIR
    inference = {
        "trim_border": trim_border,
        "keep_by": keep_by,
        "tta": tta,
        "postprocess": postprocess,
        "batch_size": batch_size,
        "device": device,
        "backend": backend,
    }
    overrides = {"data": {"root": [data] if data else None}, "train": {"runs_dir": runs_dir}, "inference": inference}
    settings = flag_settings(ctx, overrides, config)
    checkpoint = chosen_checkpoint(checkpoint, settings.train.runs_dir)
    model, info = load_model(checkpoint, settings.inference)
    pairs, split = _pairs(settings, info, checkpoint, data is None, split)
    maps = ErrorMaps(report) if report else None
    # SIGTERM stops it as Ctrl-C does: the worker processes end, nothing is written, exit code 143
    with sigterm_raises(lambda: Interrupted("SIGTERM. Nothing was written.", 143)) as stop:
        try:
            with progress_bar() as progress:
                task = progress.add_task("evaluate", total=len(pairs), info="")
                result = evaluate_model(
                    model,
                    info.settings,
                    pairs,
                    settings.inference,
                    lambda n: progress.advance(task, n),
                    on_image=maps,
                    spacing=_spacing(spacing),
                )
        except Exception as exc:  # a pool broken by the same SIGTERM sent to the whole process group
            if stop["signal"] and not isinstance(exc, Interrupted):
                raise Interrupted("SIGTERM. Nothing was written.", 143) from exc
            raise
    if csv:
        write_csv(result, csv)
        say(f"Per-image scores written to {csv}")
    if report and maps:
        title = f"{checkpoint.name}: {len(result.rows)} images, split {split}"
        write_evaluate_report(report, maps.records, result.summary, title)
        say(f"Report written to {report}")
    if as_json:
        stdout.print_json(json.dumps(result.as_json() | {"checkpoint": str(checkpoint), "split": split}))
    else:
        _print_table(result, checkpoint, split)
    _report_failures(result)


def _report_failures(result: Evaluation) -> None:
    """One line per pair that could not be scored (left out of the summary), then exit code 1."""
    print_failures([row.error for row in result.failed], "pairs not scored[/red] (see --csv)")
    if result.failed:
        console.print(f"{len(result.failed)} of {len(result.failed) + len(result.rows)} pairs could not be scored.")
        raise typer.Exit(1)


def _pairs(
    settings: Settings, info: CheckpointInfo, checkpoint: Path, data_default: bool, split: Split | None
) -> tuple[list[Pair], str]:
    """The pairs to score, by the checkpoint's own split rule so a seeded split never scores its training images."""
    from cxrseg.assets import BUNDLED_MODEL
    from cxrseg.dataset import default_split, listing, select_pairs, unseen
    from cxrseg.errors import DataError

    trained = info.settings.data
    roots = settings.data.root
    if data_default and checkpoint.resolve() != BUNDLED_MODEL.resolve() and trained.root != roots:
        if all(root.is_dir() for root in trained.root):
            roots = trained.root
            say(f"Data: {', '.join(map(str, roots))}, the folder(s) the checkpoint was trained on")
        else:  # a run copied to another place or machine: its training folders are not here
            say(
                f"Data: {', '.join(map(str, roots))}; the checkpoint was trained on "
                f"{', '.join(map(str, trained.root))}, not found here (pass --data to choose)"
            )
    pairs, splits, emptied = [], [split or default_split(root) for root in roots], []
    for root, chosen in zip(roots, splits, strict=True):
        chosen_pairs = select_pairs(root, chosen, trained.val_fraction, trained.split_seed, rule=trained.split_rule)
        if chosen == "val":  # a film the weights were fitted on (a changed folder, a fine-tune's start) is not `val`
            chosen_pairs, learnt = unseen(chosen_pairs, info.trained_on)
            if learnt:
                learnt_names = listing([p.name for p in learnt], "films the checkpoint learnt")
                say(f"Left out of {root}'s val split: {learnt_names}")
                emptied += [] if chosen_pairs else [str(root)]
        pairs += chosen_pairs
    if emptied and not pairs:
        raise DataError(
            f"{', '.join(emptied)}: every film of the val split was learnt by {checkpoint}, so none can score it; "
            "use --split test, or --data a folder of films it never saw."
        )
    if len(set(splits)) == 1:
        return pairs, splits[0]
    return pairs, ", ".join(f"{chosen} of {root}" for root, chosen in zip(roots, splits, strict=True))


def _spacing(text: str | None) -> tuple[float, float] | None:
    """'0.14' or '0.14,0.15' (row, column mm per pixel) -> (row_mm, col_mm); refuses anything else."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v < 100 for v in values):
        raise typer.BadParameter(f"{text!r}: give mm per pixel, e.g. 0.14 or 0.14,0.15", param_hint="--spacing")
    return (values[0], values[-1])


def _print_table(result: Evaluation, checkpoint: Path, split: str) -> None:
    from cxrseg.metrics import DISTANCE_METRICS

    stdout.print(f"Checkpoint {checkpoint}", markup=False, highlight=False)
    table = Table(title=escape(f"{len(result.rows)} images, split '{split}'"))
    for column in ("metric", "mean", "sd", "median", "n"):
        table.add_column(column, justify="right")
    for name, stats in result.summary.items():
        distance = name in DISTANCE_METRICS
        digits = 2 if distance else 4
        table.add_row(
            name + (f" ({result.distance_unit})" if distance else ""),
            f"{stats['mean']:.{digits}f}",
            f"{stats['sd']:.{digits}f}",
            f"{stats['median']:.{digits}f}",
            str(stats["n"]),
        )
    stdout.print(table)
