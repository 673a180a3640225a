"""Where the files shipped inside the package live: the bundled model and the sample X-rays."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).parent / "assets"
BUNDLED_MODEL = ASSETS_DIR / "lung-unet.safetensors"
SAMPLE_DIR = ASSETS_DIR / "sample"
"""Real X-rays with lung masks (masks CC BY-NC-SA 4.0: see its README), in the dataset layout of cxrseg.dataset."""
