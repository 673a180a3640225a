"""Mask clean-up (keep the two largest components, fill holes, drop specks), erosion, dilation and lung sides."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours belong to the same part


def count_components(mask: np.ndarray) -> int:
    """8-connected components, the connectivity used everywhere in cxrseg."""
    return int(ndimage.label(mask, structure=EIGHT)[1])


CONFIDENT = 0.9  # probability from which a pixel counts towards a part's confident area


def clean_mask(
    mask: np.ndarray, min_fraction: float = 0.002, keep: int = 2, prob: np.ndarray | None = None
) -> np.ndarray:
    """Keep at most `keep` connected components (8-connected) whose area is at least `min_fraction` of the
    image, and fill holes inside each. Returns a new boolean mask.

    Without `prob` the largest are kept. With `prob` (the probability map `mask` was thresholded from), those
    with the largest confident area (pixels of probability >= CONFIDENT), ties by area: a large, diffuse part
    the model half-believes, such as a ghost drawn in a noisy margin, loses to a smaller lung it is sure of.
    """
    return clean_and_count(mask, min_fraction, keep, prob)[0]


def clean_and_count(
    mask: np.ndarray, min_fraction: float = 0.002, keep: int = 2, prob: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """(clean_mask(mask, ..., prob), components of `mask` before the clean-up) from one labelling."""
    labels, count = ndimage.label(mask, structure=EIGHT)
    if count == 0:
        return np.zeros_like(mask, dtype=bool), 0
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    min_area = min_fraction * mask.size
    if prob is None:
        ranked = np.argsort(areas, kind="stable")[::-1]
    else:
        confident = np.bincount(labels[prob >= CONFIDENT], minlength=count + 1)[1:]
        ranked = np.lexsort((areas, confident))[::-1]  # by confident area, then area
    order = [i + 1 for i in ranked if areas[i] >= min_area][:keep]
    kept = np.zeros_like(mask, dtype=bool)
    objects = ndimage.find_objects(labels)
    for label in order:  # fill holes inside each kept part's bounding box only: much faster on large films
        box = objects[label - 1]
        kept[box] |= fill_holes(labels[box] == label)
    return kept, int(count)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The pixels of scipy.ndimage.binary_fill_holes(mask): background parts (4-connected) that do not touch the
    edge become foreground. One labelling instead of dilating the outside until it stops growing."""
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask.copy()
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(count + 1, dtype=bool)
    outside[edge] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[background]


def erode(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion by the 4-connected cross, outside the image counted as background.

    The same pixels as scipy.ndimage.binary_erosion(mask, iterations=...), from shifted views: several times faster.
    """
    out = mask.astype(bool, copy=True)
    for _ in range(iterations):
        inner = out.copy()
        inner[1:, :] &= out[:-1, :]
        inner[:-1, :] &= out[1:, :]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        inner[[0, -1], :] = False
        inner[:, [0, -1]] = False
        out = inner
    return out


def square_spread(mask: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    """Binary dilation (`grow`) or erosion by the (2 radius + 1) square, outside the image counted as background.

    The same pixels as scipy.ndimage.binary_dilation / binary_erosion(mask, 3x3 square, iterations=radius), from
    shifted views along each axis in turn (the square is separable): about 10x faster.
    """
    out = mask.astype(bool, copy=True)
    for axis in (0, 1):
        source, size = out.copy(), out.shape[axis]
        moved = np.moveaxis(out, axis, 0)  # a view: writing to it writes to `out`
        seen = np.moveaxis(source, axis, 0)
        for step in range(1, min(radius, size - 1) + 1):
            if grow:
                moved[step:] |= seen[:-step]
                moved[:-step] |= seen[step:]
            else:
                moved[step:] &= seen[:-step]
                moved[:-step] &= seen[step:]
        if not grow:  # pixels within `radius` of the edge have background in their square
            moved[:radius] = False
            moved[max(size - radius, 0) :] = False
    return out


RIGHT, LEFT = 1, 2  # patient sides; the patient's right lung is on the image's left (PA and AP alike)


PAIR_SHARE = 0.25  # the smaller of two lungs is at least this share of the larger (train masks: 1st percentile 0.39)
PAIR_OVERLAP = 0.25  # ... and at most this share of the narrower one's columns is shared with the other


def lung_sides(mask: np.ndarray, middle: float | None = None) -> tuple[np.ndarray, int]:
    """Label each 8-connected component wholly by the side of the midline its centroid lies on.

    The midline runs halfway between the centroids of the two largest parts when they look like a pair of
    lungs: comparable in area and side by side (they share at most a quarter of the narrower one's columns,
    where two pieces of one lung lie one above the other). A film pasted off-centre into a figure, or framed
    with a wide margin on one side, is so split at its own mediastinum. Otherwise (one part, or a lung and
    small pieces) the midline is `middle`, by default the image's middle column (the film's, when uniform
    margins were cropped off before the model). Returns ((H, W) uint8 with 0 background, RIGHT or
    LEFT; number of components).
    """
    labels, count = ndimage.label(mask, structure=EIGHT)
    side_of_label = np.zeros(count + 1, dtype=np.uint8)
    # a few parts (the usual two lungs): whole-image passes beat finding bounding boxes; many: one box each
    boxes = [np.s_[:, :]] * count if count <= 4 else ndimage.find_objects(labels)
    sizes, centroids, spans = np.zeros(count), np.zeros(count), np.zeros((count, 2))
    for label, box in enumerate(boxes, start=1):
        column_counts = (labels[box] == label).sum(axis=0)
        columns = np.arange(mask.shape[1])[box[1]]
        sizes[label - 1] = column_counts.sum()
        centroids[label - 1] = column_counts @ columns / sizes[label - 1]
        used = columns[column_counts > 0]
        spans[label - 1] = used[0], used[-1] + 1
    midline = (mask.shape[1] - 1) / 2 if middle is None else middle
    if count >= 2:
        second, first = np.argsort(sizes, kind="stable")[-2:]
        shared = min(spans[first, 1], spans[second, 1]) - max(spans[first, 0], spans[second, 0])
        narrower = min(np.diff(spans[first])[0], np.diff(spans[second])[0])
        if sizes[second] >= PAIR_SHARE * sizes[first] and shared <= PAIR_OVERLAP * narrower:
            midline = (centroids[first] + centroids[second]) / 2
    side_of_label[1:] = np.where(centroids < midline, RIGHT, LEFT)
    return np.take(side_of_label, labels), int(count)
