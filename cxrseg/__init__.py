"""cxrseg: lung-field segmentation of chest X-rays with a U-Net."""

from pathlib import Path

__version__ = "0.1.0"

SAMPLE_DIR = Path(__file__).parent / "assets" / "sample"
"""Real X-rays with lung masks shipped in the package (masks CC BY-NC-SA 4.0: see its README)."""
