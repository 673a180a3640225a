"""What the uniform-margin crop (`--trim-border`) costs against decoding the X-ray it crops.

    python benchmarks/trim.py [--repeats 7]

Builds large films from a packaged sample X-ray (a 16-bit PNG of 3000x2500 px alone, and pasted into a
4000x3400 px canvas of one grey, as an exported figure or a padded film comes), then times, in one run,
decoding each file (cxrseg.imaging.read_image, the baseline every prediction pays) and finding its content
box (cxrseg.preprocess.content_box). Prints the best of `--repeats` for each and the crop's cost as a share
of the decode.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import cpu_model
from PIL import Image

from cxrseg.assets import SAMPLE_DIR
from cxrseg.imaging import read_image
from cxrseg.preprocess import content_box


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def films(folder: Path) -> dict[str, Path]:
    """The two test files: a film alone, the same film in a flat canvas (16-bit PNG both)."""
    with Image.open(SAMPLE_DIR / "image" / "CHNCXR_0001_0.png") as sample:
        grey = np.asarray(sample.convert("L").resize((2500, 3000), Image.Resampling.BILINEAR), dtype=np.float32)
    rng = np.random.default_rng(0)
    film = np.clip(grey * 257 + rng.normal(0, 60, grey.shape), 0, 65535).astype(np.uint16)  # 16-bit, grainy
    canvas = np.full((3400, 4000), 20000, dtype=np.uint16)
    canvas[250:3250, 900:3400] = film
    paths = {"film alone": folder / "film.png", "film in a canvas": folder / "canvas.png"}
    Image.fromarray(film).save(paths["film alone"])
    Image.fromarray(canvas).save(paths["film in a canvas"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"CPU {cpu_model()}, best of {args.repeats}")
    print(f"{'input':<18} | {'size':>11} | decode (ms) | crop (ms) | crop / decode | content box")
    with tempfile.TemporaryDirectory(prefix="cxrseg-trim-") as tmp:
        for name, path in films(Path(tmp)).items():
            image = read_image(path)
            decode = best_seconds(lambda path=path: read_image(path), args.repeats)
            crop = best_seconds(lambda image=image: content_box(image), args.repeats)
            size = f"{image.shape[1]}x{image.shape[0]}"
            print(
                f"{name:<18} | {size:>11} | {decode * 1e3:11.1f} | {crop * 1e3:9.1f} | {crop / decode:13.3f} | "
                f"{content_box(image)}"
            )


if __name__ == "__main__":
    main()
