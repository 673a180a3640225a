"""The `inverted` flag's measure on real films, alone and pasted into figures.

    python benchmarks/midline_canvas.py [--data ../shared/data/cxr-lungs] [--figures 40]

Prints midline_contrast over the `train` films (the split its threshold was read from), with and without
the film's box on a flat canvas, then pastes the first N `train` films off-centre into a 900x760 figure
with a caption and an arrow, upright and inverted, on a white and a black canvas, as they are and with their
contrast boosted (grey values clipped: a white mediastinum merges with a white page), and counts the figures
judged wrongly (contrast < 0 on an upright film, >= 0 on an inverted one) with and without the box.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import cpu_model
from PIL import Image, ImageDraw

import cxrseg.inference.quality as quality
from cxrseg.assets import BUNDLED_MODEL
from cxrseg.checkpoint import read_info
from cxrseg.dataset import select_pairs
from cxrseg.imaging import grey_window, read_image

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-lungs"


def whole(image: np.ndarray, window: object = None) -> tuple[slice, slice]:
    return slice(0, image.shape[0]), slice(0, image.shape[1])


def contrast(image: np.ndarray, boxed: bool) -> float:
    original = quality.film_box
    quality.film_box = original if boxed else whole
    try:
        return quality.midline_contrast(image)
    finally:
        quality.film_box = original


def figure(film: np.ndarray, canvas: float, inverted: bool) -> np.ndarray:
    page = np.full((760, 900), canvas, np.float32)
    page[40 : 40 + film.shape[0], 60 : 60 + film.shape[1]] = 1 - film if inverted else film
    picture = Image.fromarray((page * 255).astype(np.uint8))
    ink = int(255 * (1 - canvas))
    draw = ImageDraw.Draw(picture)
    draw.text((80, 600), "Figure 2. Bilateral consolidation, day 3", fill=ink)
    draw.line((700, 200, 600, 300), fill=ink, width=5)
    return np.asarray(picture, np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--figures", type=int, default=40)
    parser.add_argument("--gains", type=float, nargs="+", default=[1.0, 1.5, 2.0], help="contrast boosts to try")
    args = parser.parse_args()
    print(f"cxrseg midline contrast, CPU {cpu_model()} (counts, not timings); `train` films of {args.data}")
    split = read_info(BUNDLED_MODEL).settings.data  # the bundled model's own train/val split
    pairs = select_pairs(args.data, "train", split.val_fraction, split.split_seed, rule=split.split_rule)
    films = [read_image(pair.image) for pair in pairs]
    for boxed in (False, True):
        values = np.array([contrast(film, boxed) for film in films])
        boxes = sum(quality.film_box(f, grey_window(f)) != whole(f) for f in films) if boxed else 0
        print(
            f"train films ({len(films)}), {'film box' if boxed else 'whole image'}: min {values.min():.3f}, "
            f"median {np.median(values):.3f}, max {values.max():.3f}"
            + (f"; {boxes} with a flat margin" if boxed else "")
        )
    for gain in args.gains:
        boosted = [np.clip((f[:512, :512] - 0.5) * gain + 0.5, 0, 1) for f in films[: args.figures]]
        for boxed in (False, True):
            wrong = {}
            for canvas, name in ((1.0, "white"), (0.0, "black")):
                for inverted in (False, True):
                    key = f"{name}{' inverted' if inverted else ''}"
                    wrong[key] = sum((contrast(figure(f, canvas, inverted), boxed) < 0) != inverted for f in boosted)
            print(
                f"contrast x{gain:g}, figures judged wrongly, {'film box' if boxed else 'whole image'} "
                f"(of {len(boosted)} each): {wrong}"
            )


if __name__ == "__main__":
    main()
