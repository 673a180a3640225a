"""Where a checkpoint's errors lie on one split: along the expert outline, or in large disagreements.

Usage:
    python benchmarks/error_anatomy.py CHECKPOINT                       # val split of ../shared/data/cxr-lungs
    python benchmarks/error_anatomy.py CHECKPOINT --split test --figure errors.png --json errors.json

Every wrong pixel is binned by its distance from the expert outline: a false positive (predicted, not in the
expert mask) by its distance outside the mask, a false negative by its distance inside. Wrong regions thicker
than about 8 px and larger than --chunk-px are listed as disagreements, each with where its centroid lies (the
patient's side, the upper, middle or lower third of that lung, its medial or lateral half) and whether the
model added it (FP) or missed it (FN). "Dice with the disagreements counted right" is the ceiling of any
change that only moves the outline; the gap between it and the Dice is what the disagreements cost.
Predictions come from cxrseg's own evaluation (the checkpoint's settings, post-processing on, no TTA).

With --ignore-dir DIR, it writes an ignore mask (white: left out of `cxrseg train`'s loss) for each film with a
missed (FN) disagreement at one of --ignore-where's locations, dilated by 3 px, named after the film: copy DIR
to a dataset's ignore/ to train without that outline convention (benchmarks/RESULTS.md, "Ignoring the minority
outline convention"). Only films of the chosen split are written; use --split train.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import cpu_model, write_json
from PIL import Image
from scipy import ndimage

# every cxrseg import in one place
import cxrseg
from cxrseg.checkpoint import load_checkpoint
from cxrseg.dataset import select_pairs, unseen
from cxrseg.errors import CxrsegError
from cxrseg.imaging import read_image
from cxrseg.inference.evaluate import evaluate_model
from cxrseg.inference.render import save_png
from cxrseg.metrics import score
from cxrseg.report.images import error_map

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-lungs"
BIN_EDGES = (2, 4, 8, 16)  # px from the expert outline; the last bin is everything farther
BIN_NAMES = ("<=2", "2-4", "4-8", "8-16", ">16")
THICKNESS = 4  # an opening by this many iterations keeps regions thicker than ~2x as many pixels
TILE = 256
CONVENTION = (
    "left lower medial",
    "left middle medial",
    "left lower lateral",
    "right lower medial",
    "right middle medial",
)
LOCATIONS = tuple(
    f"{side} {third} {half}"
    for side in ("right", "left")
    for third in ("above", "upper", "middle", "lower", "below")
    for half in ("medial", "lateral")
)
IGNORE_MARGIN = 3  # px the ignore mask reaches beyond the region: its outline band too


@dataclass(frozen=True)
class Chunk:
    kind: str  # "FP": predicted outside the expert mask; "FN": expert lung the model missed
    pixels: int
    where: str  # e.g. "left lower medial" (the patient's side)


@dataclass
class FilmErrors:
    name: str
    dice: float
    dice_chunks_right: float  # with every chunk's pixels counted as the expert drew them
    fp_bins: np.ndarray  # wrong pixels per distance bin
    fn_bins: np.ndarray
    chunks: list[Chunk] = field(default_factory=list)


def _bins(distance: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    edges = np.array(BIN_EDGES, dtype=float)
    return np.bincount(np.searchsorted(edges, distance[wrong], side="left"), minlength=len(BIN_NAMES))


def locate(region: np.ndarray, truth: np.ndarray) -> str:
    """Side, third and half of the lung a region sits in, judged against the expert mask (image left = the
    patient's right)."""
    rows, cols = np.nonzero(region)
    row, col = rows.mean(), cols.mean()
    t_cols = np.nonzero(truth)[1]
    midline = t_cols.mean() if t_cols.size else truth.shape[1] / 2
    on_left_of_image = col < midline
    lung = truth & ((np.arange(truth.shape[1]) < midline) == on_left_of_image)[None, :]
    l_rows, l_cols = np.nonzero(lung if lung.any() else truth)
    if not l_rows.size:
        return "no expert lung"
    top, bottom = l_rows.min(), l_rows.max()
    if row < top or row > bottom:
        third = "above" if row < top else "below"
    else:
        third = ("upper", "middle", "lower")[min(2, int(3 * (row - top) / (bottom - top + 1)))]
    inner, outer = (l_cols.max(), l_cols.min()) if on_left_of_image else (l_cols.min(), l_cols.max())
    half = "medial" if abs(col - inner) < abs(col - outer) else "lateral"
    return f"{'right' if on_left_of_image else 'left'} {third} {half}"


def disagreements(truth: np.ndarray, pred: np.ndarray, chunk_px: int) -> list[tuple[Chunk, np.ndarray]]:
    """Each wrong region thicker than ~2 THICKNESS px with a core of at least chunk_px, and its pixels."""
    found = []
    for kind, wrong in (("FP", pred & ~truth), ("FN", truth & ~pred)):
        thick = ndimage.binary_opening(wrong, iterations=THICKNESS)
        labels, n = ndimage.label(thick)
        for index in range(1, n + 1):
            core = labels == index
            if core.sum() < chunk_px:
                continue
            region = ndimage.binary_dilation(core, iterations=THICKNESS) & wrong
            found.append((Chunk(kind, int(region.sum()), locate(region, truth)), region))
    return found


def ignore_mask(found: list[tuple[Chunk, np.ndarray]], shape: tuple[int, ...], where: Sequence[str]) -> np.ndarray:
    """The missed (FN) disagreements of `found` (see disagreements) located at one of `where`, dilated by
    IGNORE_MARGIN px."""
    ignore = np.zeros(shape, dtype=bool)
    for chunk, region in found:
        if chunk.kind == "FN" and chunk.where in where:
            ignore |= region
    return ndimage.binary_dilation(ignore, iterations=IGNORE_MARGIN) if ignore.any() else ignore


def anatomy(
    name: str,
    truth: np.ndarray,
    pred: np.ndarray,
    chunk_px: int,
    found: list[tuple[Chunk, np.ndarray]] | None = None,
) -> FilmErrors:
    """Bin one film's wrong pixels by distance from the outline and list its large disagreements (`found`,
    when the caller has them already)."""
    fp, fn = pred & ~truth, truth & ~pred
    outside = ndimage.distance_transform_edt(~truth)
    inside = ndimage.distance_transform_edt(truth)
    chunks, counted = [], np.zeros_like(truth)
    for chunk, region in disagreements(truth, pred, chunk_px) if found is None else found:
        counted |= region
        chunks.append(chunk)
    fixed = np.where(counted, truth, pred)
    dice, dice_fixed = (score(p, truth, with_distances=False).dice for p in (pred, fixed))
    return FilmErrors(name, dice, dice_fixed, _bins(outside, fp), _bins(inside, fn), chunks)


def figure(films: list[FilmErrors], pairs: dict[str, tuple[Path, np.ndarray, np.ndarray]], path: Path) -> None:
    """Error maps (orange: added, blue: missed) of the films with disagreements, worst first, 4 per row."""
    tiles = []
    for film in films:
        image, truth, pred = pairs[film.name]
        picture = error_map(read_image(image), truth, pred, side=TILE)
        tile = Image.new("RGB", (TILE, TILE))
        tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
        tiles.append(tile)
    if not tiles:
        return
    columns = min(4, len(tiles))
    sheet = Image.new("RGB", (columns * TILE, -(-len(tiles) // columns) * TILE))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * TILE, (i // columns) * TILE))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(sheet, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="val", choices=["train", "val", "test", "all"])
    parser.add_argument("--chunk-px", type=int, default=1500, help="smallest disagreement listed (px)")
    parser.add_argument("--figure", type=Path, help="PNG of the films with disagreements")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ignore-dir", type=Path, help="write ignore masks of the FN disagreements here")
    parser.add_argument(
        "--ignore-where",
        default=",".join(CONVENTION),
        help="comma-separated locations whose FN disagreements the ignore masks cover (default: %(default)s)",
    )
    args = parser.parse_args()
    where = [w.strip() for w in args.ignore_where.split(",") if w.strip()]
    if args.ignore_dir:
        unknown = [w for w in where if w not in LOCATIONS]
        if unknown or not where:
            raise SystemExit(
                f"error: --ignore-where {', '.join(repr(w) for w in unknown) or 'is empty'}: a location is a side "
                "(right, left), a third (above, upper, middle, lower, below) and a half (medial, lateral), "
                "e.g. 'left lower medial'."
            )
        if args.split != "train":
            raise SystemExit("error: --ignore-dir writes masks for training films only; use --split train.")
        if args.ignore_dir.exists() and not args.ignore_dir.is_dir():
            raise SystemExit(f"error: {args.ignore_dir} is a file; give a new folder for the ignore masks.")
        if args.ignore_dir.exists() and any(args.ignore_dir.iterdir()):
            raise SystemExit(f"error: {args.ignore_dir} is not empty; give a new folder so that no old mask stays.")
    cxrseg.tune_cpu_runtime()

    try:
        model, info = load_checkpoint(args.checkpoint)
        settings = info.settings
        split = settings.data
        pairs = select_pairs(args.data, args.split, split.val_fraction, split.split_seed, rule=split.split_rule)
        if args.split == "val":  # as `cxrseg evaluate` scores it: never a film the checkpoint was fitted on
            pairs = unseen(pairs, info.trained_on)[0]
            if not pairs:
                raise SystemExit(f"error: {args.data}: the checkpoint learnt every `val` film; use --split test.")
    except CxrsegError as exc:
        raise SystemExit(f"error: {exc}") from None
    films: list[FilmErrors] = []
    kept: dict[str, tuple[Path, np.ndarray, np.ndarray]] = {}
    ignored: list[str] = []
    if args.ignore_dir:
        args.ignore_dir.mkdir(parents=True, exist_ok=True)

    def on_image(row, truth: np.ndarray, pred: np.ndarray) -> None:
        found = disagreements(truth, pred, args.chunk_px)
        film = anatomy(row.name, truth, pred, args.chunk_px, found)
        films.append(film)
        if args.ignore_dir:
            ignore = ignore_mask(found, truth.shape, where)
            if ignore.any():
                save_png(Image.fromarray(ignore.astype(np.uint8) * 255), args.ignore_dir / f"{row.name}.png")
                ignored.append(row.name)
        if film.chunks and args.figure:
            kept[row.name] = (row.image, truth, pred)

    cfg = settings.inference.model_copy(update={"postprocess": True, "tta": False})
    evaluation = evaluate_model(model, settings, pairs, cfg, on_image=on_image)
    print(
        f"cxrseg {cxrseg.__version__}, CPU {cpu_model()}; {args.checkpoint.name} on "
        f"{args.data.name} `{args.split}` ({len(films)} films, {len(evaluation.failed)} unreadable)"
    )
    fp = np.sum([f.fp_bins for f in films], axis=0)
    fn = np.sum([f.fn_bins for f in films], axis=0)
    wrong = int(fp.sum() + fn.sum())
    print("\nwrong pixels by distance from the expert outline (px)")
    print(f"{'':6}" + "".join(f"{b:>10}" for b in BIN_NAMES) + f"{'all':>10}")
    for label, counts in (("FP", fp), ("FN", fn)):
        print(f"{label:6}" + "".join(f"{int(c):>10}" for c in counts) + f"{int(counts.sum()):>10}")
    share = np.cumsum(fp + fn) / max(1, wrong)
    print(f"{'share':6}" + "".join(f"{s:>10.2f}" for s in share))

    with_chunks = sorted((f for f in films if f.chunks), key=lambda f: f.dice)
    in_chunks = sum(c.pixels for f in films for c in f.chunks)
    print(f"\ndisagreements (thicker than ~{2 * THICKNESS} px, >= {args.chunk_px} px): {len(with_chunks)} films")
    for film in with_chunks:
        parts = "; ".join(f"{c.kind} {c.pixels} px {c.where}" for c in film.chunks)
        print(f"  {film.name:24} Dice {film.dice:.4f}  {parts}")
    dice = float(np.mean([f.dice for f in films]))
    ceiling = float(np.mean([f.dice_chunks_right for f in films]))
    print(
        f"\nmean Dice {dice:.4f}; with the disagreements counted right {ceiling:.4f} "
        f"(they hold {in_chunks / max(1, wrong):.0%} of the wrong pixels)"
    )
    if args.figure and with_chunks:
        figure(with_chunks, kept, args.figure)
        print(f"error maps: {args.figure}")
    if args.ignore_dir:
        print(f"ignore masks: {len(ignored)} films written to {args.ignore_dir} ({', '.join(where)})")
    if args.json:
        write_json(
            {
                "checkpoint": str(args.checkpoint),
                "split": args.split,
                "bins": list(BIN_NAMES),
                "fp": fp.tolist(),
                "fn": fn.tolist(),
                "dice": dice,
                "dice_disagreements_right": ceiling,
                "films": [
                    {"name": f.name, "dice": f.dice, "chunks": [c.__dict__ for c in f.chunks]} for f in with_chunks
                ],
            },
            args.json,
        )


if __name__ == "__main__":
    main()
