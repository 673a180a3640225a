"""Per-image lung measurements and the quality flags users filter on (cxrseg.inference.table holds them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cxrseg.imaging import grey_window
from cxrseg.postprocess import LEFT, RIGHT, count_components, lung_sides, square_spread

# Thresholds, checked against the Shenzhen `train` masks and `val` predictions only (figures: docs/predict.md).
NO_LUNG_FRACTION = 0.02  # below: no lung found, probably not a frontal chest X-ray
LOW_LUNG_FRACTION = 0.10  # train masks: min 0.099, 1st percentile 0.139
HIGH_LUNG_FRACTION = 0.50  # train masks: max 0.43
MIN_SIDE_RATIO = 0.5  # smaller / larger lung area; train masks: 1st percentile 0.39, 5th 0.68
MIN_BORDER_CONFIDENCE = 0.65  # mean |2p - 1| near the outline; bundled model on `val`: 0.59-0.76, inverted 0.27-0.38
BORDER_WIDTH = 2  # model-input pixels each side of the mask outline
MIN_MIDLINE_CONTRAST = 0.0  # train films: min 0.077, median 0.31; inverting a film negates it
CANVAS_TOLERANCE = 0.02  # share of the grey window within which a pixel has the canvas colour
CANVAS_FRAME = 0.8  # share of the outermost pixels that must have it for a flat canvas to count
FILM_PIECE = 0.05  # regions off the canvas at least this share of the largest are parts of the film

FLAGS = (
    "no_lung",
    "lung_fraction_low",
    "lung_fraction_high",
    "not_two_lungs",
    "lr_imbalance",
    "low_border_confidence",
    "inverted",
)


@dataclass(frozen=True)
class LungMeasures:
    """What predict reports about one mask. Patient's right lung is on the image's left (radiological view)."""

    height: int
    width: int
    lung_px: int
    right_px: int  # components whose centroid lies in the image's left half
    left_px: int  # components whose centroid lies in the image's right half
    components: int  # 8-connected components of the final mask
    raw_components: int  # 8-connected components of the thresholded map, before post-processing
    mean_probability: float  # mean lung probability inside the final mask; nan when empty
    border_confidence: float  # mean |2p - 1| near the outline at model resolution; nan without outline
    midline_contrast: float  # mediastinum minus lung-field median grey over the 1-99 % range; < 0: inverted
    film_px: int = 0  # pixels of the film the model saw (uniform margins cropped); 0: the whole image

    @property
    def lung_fraction(self) -> float:
        """Lung share of the film: of the whole image, or of what is left once uniform margins are cropped."""
        return self.lung_px / max(1, self.film_px or self.height * self.width)


def split_sides(mask: np.ndarray, labelled: tuple[np.ndarray, int] | None = None) -> tuple[int, int, int]:
    """(patient-right px, patient-left px, components): each component goes to the side of its centroid.

    Patient's right is the image's left in a radiograph displayed the standard way (PA or AP). `labelled`:
    lung_sides(mask), when the caller has it already.
    """
    sides, count = labelled if labelled is not None else lung_sides(mask)
    return int(np.count_nonzero(sides == RIGHT)), int(np.count_nonzero(sides == LEFT)), count


def border_confidence(prob: np.ndarray, valid: np.ndarray, threshold: float = 0.5) -> float:
    """Mean |2p - 1| within BORDER_WIDTH pixels of the outline of prob > threshold; nan when there is none.

    Measured on the (S, S) model output, so the band has the same meaning at any input resolution.
    """
    inside = valid > 0
    mask = (prob > threshold) & inside
    if not mask.any() or mask.all():
        return math.nan
    band = square_spread(mask, BORDER_WIDTH, grow=True) & ~square_spread(mask, BORDER_WIDTH, grow=False) & inside
    return float(np.abs(2 * prob[band] - 1).mean()) if band.any() else math.nan


def film_box(image: np.ndarray, window: tuple[float, float]) -> tuple[slice, slice]:
    """The rows and columns of the film when it lies on a flat canvas (a journal figure, a scan with a wide
    even margin): the bounding box of the large connected regions that differ from the canvas colour.

    The canvas is the median of the image's outermost pixels, when at least CANVAS_FRAME of them lie within
    CANVAS_TOLERANCE of the grey `window` (grey_window of the image) from it; otherwise, or when the box is
    smaller than a quarter of the image's height or width, the whole image. The box holds every region of at
    least FILM_PIECE of the largest one's area; captions and arrows on the canvas are smaller regions.
    """
    whole = (slice(0, image.shape[0]), slice(0, image.shape[1]))
    if min(image.shape) < 8:
        return whole
    frame = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    canvas = float(np.median(frame))
    low, high = window
    tolerance = CANVAS_TOLERANCE * (high - low)
    if high <= low or np.mean(np.abs(frame - canvas) <= tolerance) < CANVAS_FRAME:
        return whole
    labels, count = ndimage.label(np.abs(image - canvas) > tolerance)
    if count == 0:
        return whole
    sizes = np.bincount(labels.ravel())[1:]
    # a film whose own pixels reach the canvas colour (a white mediastinum on a white page) falls apart in
    # pieces: the box holds every large one, captions and arrows are far smaller
    boxes = ndimage.find_objects(labels)
    pieces = [box for box, size in zip(boxes, sizes, strict=True) if size >= FILM_PIECE * sizes.max()]
    rows = slice(min(b[0].start for b in pieces), max(b[0].stop for b in pieces))
    cols = slice(min(b[1].start for b in pieces), max(b[1].stop for b in pieces))
    if rows.stop - rows.start < image.shape[0] / 4 or cols.stop - cols.start < image.shape[1] / 4:
        return whole
    return rows, cols


def midline_contrast(image: np.ndarray) -> float:
    """How much brighter the mediastinum is than the lung fields, from where they lie on a frontal film.

    (median grey of the central strip - median grey of the two lateral fields) / (99th - 1st percentile, read by
    grey_window), over rows 25-65 % of the height; strip: columns 45-55 %, fields: 15-35 % and 65-85 % of the width,
    of the film's box on a flat canvas (film_box), else of the whole image.
    Positive on a normal frontal film (air is dark), negative on an inverted one; it needs no mask, so it
    still works when the model, fooled by the inversion, segments the wrong structures.
    """
    window = grey_window(image)
    box = film_box(image, window)
    if box != (slice(0, image.shape[0]), slice(0, image.shape[1])):
        image, window = image[box], grey_window(image[box])
    height, width = image.shape
    if height < 4 or width < 8:
        return math.nan
    rows = slice(int(0.25 * height), max(int(0.65 * height), int(0.25 * height) + 1))
    strip = image[rows, int(0.45 * width) : max(int(0.55 * width), int(0.45 * width) + 1)]
    fields = np.concatenate(
        [
            image[rows, int(0.15 * width) : int(0.35 * width)].ravel(),
            image[rows, int(0.65 * width) : int(0.85 * width)].ravel(),
        ]
    )
    low, high = window
    if high <= low:
        return math.nan
    return float((np.median(strip) - np.median(fields)) / (high - low))


def measure(
    mask: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    border: float = math.nan,
    midline: float = math.nan,
    labelled: tuple[np.ndarray, int] | None = None,
    raw_components: int | None = None,
    film_px: int = 0,
) -> LungMeasures:
    """Measures of a final boolean mask and its probability map (both at original size).

    `border` (border_confidence of the model output) and `midline` (midline_contrast of the X-ray) are
    computed by the caller, where the model-resolution map and the grey image are at hand; `labelled` is
    lung_sides(mask) and `raw_components` the parts of prob > threshold, when the caller has them; `film_px`
    the area the model saw when uniform margins were cropped (lung_fraction is a share of it).
    """
    right, left, components = split_sides(mask, labelled)
    lung = right + left
    return LungMeasures(
        height=mask.shape[0],
        width=mask.shape[1],
        lung_px=lung,
        right_px=right,
        left_px=left,
        components=components,
        raw_components=count_components(prob > threshold) if raw_components is None else raw_components,
        mean_probability=float(prob[mask].mean()) if lung else math.nan,
        border_confidence=border,
        midline_contrast=midline,
        film_px=film_px,
    )


def _number(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def columns(m: LungMeasures, spacing: tuple[float, float] | None = None) -> dict[str, object]:
    """The measurement columns of predictions.csv (None: unknown); areas in mm² only with a pixel spacing."""
    mm2 = spacing[0] * spacing[1] if spacing else None
    return {
        "height": m.height,
        "width": m.width,
        "lung_px": m.lung_px,
        "lung_fraction": _number(m.lung_fraction, 5),
        "right_lung_px": m.right_px,
        "left_lung_px": m.left_px,
        "spacing_row_mm": spacing[0] if spacing else None,
        "spacing_col_mm": spacing[1] if spacing else None,
        "lung_mm2": _number(m.lung_px * mm2, 1) if mm2 else None,
        "right_lung_mm2": _number(m.right_px * mm2, 1) if mm2 else None,
        "left_lung_mm2": _number(m.left_px * mm2, 1) if mm2 else None,
        "components": m.components,
        "raw_components": m.raw_components,
        "mean_probability": _number(m.mean_probability, 4),
        "border_confidence": _number(m.border_confidence, 4),
        "midline_contrast": _number(m.midline_contrast, 4),
        "flags": ";".join(quality_flags(m)),
    }


def quality_flags(m: LungMeasures) -> list[str]:
    """Names from FLAGS that apply, in FLAGS order. With `no_lung` only `inverted` (which needs no mask) may follow."""
    flags = []
    fraction = m.lung_fraction
    if fraction < NO_LUNG_FRACTION:
        flags.append("no_lung")
        return flags + (["inverted"] if m.midline_contrast < MIN_MIDLINE_CONTRAST else [])
    if fraction < LOW_LUNG_FRACTION:
        flags.append("lung_fraction_low")
    if fraction > HIGH_LUNG_FRACTION:
        flags.append("lung_fraction_high")
    if m.components != 2:
        flags.append("not_two_lungs")
    if min(m.left_px, m.right_px) < MIN_SIDE_RATIO * max(m.left_px, m.right_px):
        flags.append("lr_imbalance")
    if m.border_confidence < MIN_BORDER_CONFIDENCE:  # nan compares False: no outline, nothing to judge
        flags.append("low_border_confidence")
    if m.midline_contrast < MIN_MIDLINE_CONTRAST:
        flags.append("inverted")
    return flags
