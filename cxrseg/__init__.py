"""cxrseg: lung-field segmentation of chest X-rays with a U-Net."""

__version__ = "0.1.0"
