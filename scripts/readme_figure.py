"""Make docs/overlay.png, the README's picture: the bundled model's masks of three packaged samples, drawn as overlays.

    python scripts/readme_figure.py [--checkpoint C] [--out docs/overlay.png]

Runs `cxrseg predict` on CHNCXR_0001, 0029 and 0071 (none seen in training), then draws each written mask over its
X-ray with cxrseg's own overlay colours, side by side at a common height.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.inference.render import overlay

NAMES = ("CHNCXR_0001_0.png", "CHNCXR_0029_0.png", "CHNCXR_0071_0.png")
HEIGHT, GAP = 360, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--out", type=Path, default=Path("docs/overlay.png"))
    args = parser.parse_args()
    images = [next(SAMPLE_DIR.rglob(name)) for name in NAMES]
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "cxrseg", "predict", *map(str, images), "--out", tmp]
        subprocess.run([*command, "--checkpoint", str(args.checkpoint), "--no-overlay"], check=True)
        for image in images:
            gray = np.asarray(Image.open(image).convert("L"))
            mask = np.asarray(Image.open(Path(tmp) / f"{image.name}.mask.png")) > 127
            picture = overlay(gray, mask)
            tiles.append(picture.resize((round(picture.width * HEIGHT / picture.height), HEIGHT), Image.LANCZOS))
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + GAP * (len(tiles) - 1), HEIGHT), "white")
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + GAP
    canvas.save(args.out)
    print(f"{args.out}: {canvas.width}x{canvas.height}")


if __name__ == "__main__":
    main()
