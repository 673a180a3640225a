"""Mask clean-up: keep the two largest components, fill holes, drop specks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def count_components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask)[1])


def clean_mask(mask: np.ndarray, min_fraction: float = 0.002, keep: int = 2) -> np.ndarray:
    """Keep at most `keep` largest connected components (8-connected) whose area is at least
    `min_fraction` of the image, and fill holes inside each. Returns a new boolean mask."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    areas = np.bincount(labels.ravel())[1:]
    min_area = min_fraction * mask.size
    order = [i + 1 for i in np.argsort(areas)[::-1][:keep] if areas[i] >= min_area]
    kept = np.zeros_like(mask, dtype=bool)
    objects = ndimage.find_objects(labels)
    for label in order:  # fill holes inside each kept part's bounding box only: much faster on large films
        box = objects[label - 1]
        kept[box] |= ndimage.binary_fill_holes(labels[box] == label)
    return kept
