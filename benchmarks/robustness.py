"""Robustness benchmark: Dice, recall and HD95 of a checkpoint on clean and corrupted pairs of one split.

Usage:
    python benchmarks/robustness.py CHECKPOINT                      # test pairs of ../shared/data/cxr-lungs
    python benchmarks/robustness.py CHECKPOINT --split val --json robustness.json
    python benchmarks/robustness.py CHECKPOINT --only clean --only rotate_15 --figure docs/robustness.png

Each corruption (benchmarks/corruptions.py, seeded, independent of the training augmentation) is applied
to every pair at full resolution; the corrupted pairs are written as PNGs to a temporary folder and scored
by cxrseg's own evaluation with the checkpoint's settings (postprocessing on, no TTA), as `cxrseg evaluate`
would score them. The stacked rows apply several corruptions in turn (a portable film of bilateral pneumonia
with burnt-in text, cropped; a small film in a wide noisy margin; ...): they are reported with their own mean,
and the mean of the single corruptions is the same as before they were added.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_model, write_json
from corruptions import ALL, CORRUPTIONS, STACKED, corrupt
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# every cxrseg import in one place
import cxrseg
from cxrseg.checkpoint import CheckpointInfo, load_checkpoint
from cxrseg.dataset import Pair, dataset_splits, find_pairs, unseen
from cxrseg.errors import CxrsegError
from cxrseg.imaging import read_image, read_mask
from cxrseg.inference.evaluate import Evaluation, evaluate_model

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-lungs"
TILE = 160


def split_pairs(root: Path, split: str, info: CheckpointInfo) -> list[Pair]:
    """The pairs of `split`: `test` is test_image/ + test_mask/, `val` the checkpoint's validation split of
    image/ without the films it was fitted on (as `cxrseg evaluate` scores it), `train` the rest of image/."""
    if split == "test":
        return find_pairs(root / "test_image", root / "test_mask")
    data = info.settings.data
    splits = dataset_splits(root, data.val_fraction, data.split_seed, rule=data.split_rule)
    if split not in splits:
        raise SystemExit(f"{root}: this cxrseg offers no '{split}' split yet; use --split test.")
    pairs = unseen(splits[split], info.trained_on)[0] if split == "val" else splits[split]
    if not pairs:
        raise SystemExit(
            f"{root}: no `{split}` pair left (the checkpoint learnt every one); use another split or folder."
        )
    return pairs


def load_8bit(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The image as 8-bit grey (H, W) and its boolean mask, as cxrseg decodes them."""
    image = read_image(pair.image)  # float in [0, 1]
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), read_mask(pair.mask).astype(bool)


def write_corrupted(name: str, pairs: list[Pair], folder: Path) -> list[Pair]:
    """Corrupt every pair and write it as PNGs into folder/image and folder/mask."""
    (folder / "image").mkdir(parents=True)
    (folder / "mask").mkdir()
    for pair in pairs:
        image, mask = load_8bit(pair)
        if name != "clean":
            image, mask = corrupt(name, image, mask, pair.name)
        Image.fromarray(image).save(folder / "image" / f"{pair.name}.png", compress_level=1)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask" / f"{pair.name}.png", compress_level=1)
    return find_pairs(folder / "image", folder / "mask")


def figures(result: Evaluation) -> dict[str, object]:
    dice = [r.scores.dice for r in result.rows]
    return {
        "n": len(result.rows),
        "dice_mean": result.summary["dice"]["mean"],
        "dice_min": min(dice),
        "recall_mean": result.summary["recall"]["mean"],
        "hd95_mean": result.summary["hd95"]["mean"],
        "hd95_undefined": len(result.rows) - result.summary["hd95"]["n"],
        "per_image": {r.name: {"dice": r.scores.dice, "recall": r.scores.recall} for r in result.rows},
    }


def print_row(name: str, values: dict[str, object]) -> None:
    hd95 = values["hd95_mean"]
    hd95_text = "n/a" if isinstance(hd95, float) and math.isnan(hd95) else f"{hd95:.1f}"
    print(
        f"{name:<20} | {values['n']:>3} | {values['dice_mean']:>9.4f} | {values['dice_min']:>8.4f} | "
        f"{values['recall_mean']:>11.4f} | {hd95_text:>14}",
        flush=True,
    )


def tile(image: np.ndarray, mask: np.ndarray, label: str) -> Image.Image:
    """One figure tile: the image fitted into TILE x TILE, the mask's outline in green, the label below."""
    scale = TILE / max(image.shape)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    picture = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    outline = small & ~ndimage.binary_erosion(small)
    pixels = np.asarray(picture).copy()
    pixels[outline] = (0, 220, 0)
    out = Image.new("RGB", (TILE, TILE + 22), "white")
    out.paste(Image.fromarray(pixels), ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    ImageDraw.Draw(out).text((4, TILE + 3), label, fill="black", font=ImageFont.load_default(size=14))
    return out


def write_figure(pair: Pair, names: list[str], path: Path, columns: int = 5) -> None:
    """A grid of one pair under each corruption, written to a temporary name and renamed."""
    image, mask = load_8bit(pair)
    tiles = [tile(*(corrupt(n, image, mask, pair.name) if n != "clean" else (image, mask)), n) for n in names]
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("RGB", (columns * TILE, rows * (TILE + 22)), "white")
    for index, item in enumerate(tiles):
        grid.paste(item, ((index % columns) * TILE, (index // columns) * (TILE + 22)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    grid.save(tmp)
    tmp.replace(path)
    print(f"figure written to {path}", flush=True)


def run(args: argparse.Namespace) -> dict[str, object]:
    model, info = load_checkpoint(args.checkpoint)
    cfg = info.settings.inference.model_copy(update={"postprocess": True, "tta": False})
    pairs = split_pairs(args.data, args.split, info)
    names = args.only or ["clean", *ALL]
    print(
        f"cxrseg {cxrseg.__version__}, torch {torch.__version__}, CPU {cpu_model()}, "
        f"{torch.get_num_threads()} threads, device {cfg.device}",
        flush=True,
    )
    print(f"checkpoint {args.checkpoint}, split '{args.split}' of {args.data}: {len(pairs)} pairs", flush=True)
    if args.figure:
        write_figure(pairs[0], names, args.figure)
    print(f"{'corruption':<20} | {'n':>3} | Dice mean | Dice min | recall mean | HD95 mean (px)", flush=True)
    print("-" * 84, flush=True)
    rows: dict[str, dict[str, object]] = {}
    started = time.perf_counter()
    for index, name in enumerate(names):
        if name in STACKED and not any(n in STACKED for n in names[:index]):
            print(f"{'stacked (each a real film at once):':<84}", flush=True)
        with tempfile.TemporaryDirectory(prefix="cxrseg-robust-") as tmp:
            corrupted = write_corrupted(name, pairs, Path(tmp))
            rows[name] = figures(evaluate_model(model, info.settings, corrupted, cfg))
        print_row(name, rows[name])
    out: dict[str, object] = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "data": str(args.data),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    print("-" * 84, flush=True)
    for group, kind, suffix in ((CORRUPTIONS, "corruptions", ""), (STACKED, "stacked corruptions", "_stacked")):
        chosen = {n: r for n, r in rows.items() if n in group}
        if chosen:
            worst = min(chosen, key=lambda n: chosen[n]["dice_mean"])
            mean = float(np.mean([r["dice_mean"] for r in chosen.values()]))
            out |= {f"mean_dice{suffix or '_corrupted'}": mean, f"worst{suffix}": worst}
            print(
                f"mean Dice over {len(chosen)} {kind} {mean:.4f}; worst {worst} {chosen[worst]['dice_mean']:.4f}",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Dataset folder (test_image/, image/ ...).")
    parser.add_argument("--split", choices=["test", "val", "train"], default="test")
    parser.add_argument("--json", type=Path, help="Write every figure, per image too, to this JSON file.")
    parser.add_argument(
        "--only", nargs="+", action="extend", choices=["clean", *ALL], metavar="NAME", help="Only these rows."
    )
    parser.add_argument("--figure", type=Path, help="Save a grid of the first pair under each corruption.")
    args = parser.parse_args()
    try:
        out = run(args)
    except CxrsegError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
