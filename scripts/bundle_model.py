"""Make the model shipped in the package from a training run's checkpoint: python scripts/bundle_model.py CHECKPOINT.

Weights are stored as float16 when the float32 file would exceed the 10 MB budget of the package (loading casts
them back to float32; the bundled model's figures in docs/MODEL_CARD.md are measured on the file written here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrseg.assets import BUNDLED_MODEL
from cxrseg.checkpoint import load_checkpoint, save_checkpoint

BUDGET = 10 * 1000 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL)
    args = parser.parse_args()
    model, info = load_checkpoint(args.checkpoint)
    values = sum(p.numel() for p in model.state_dict().values())
    half = values * 4 > BUDGET
    save_checkpoint(args.out, model, info, half=half)
    size = args.out.stat().st_size
    print(f"{args.out}: {values:,} values, {'float16' if half else 'float32'}, {size / 1e6:.2f} MB, epoch {info.epoch}")


if __name__ == "__main__":
    main()
