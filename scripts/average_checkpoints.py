"""Average the weights of cxrseg checkpoints of one model shape: python scripts/average_checkpoints.py A B --out C.

Every floating-point tensor (convolution weights, batch-norm scales, shifts and running statistics) becomes the
weighted mean of the inputs' tensors (batch-norm statistics averaged as they are, not re-estimated); integer
tensors (batch-norm step counts) are taken from the first input. The inputs must describe the same U-Net, the same
preprocessing and the same train/val split rule (a fine-tune and the model it started from, say); the output keeps
the first input's settings and epoch, and records its sources, weights and their epochs in its metrics. With --data,
the average is scored on the `val` split of that folder by that split rule, with the first input's inference
settings and no flip averaging, as training scores its checkpoints, and the Dice and IoU are recorded too (the
figure `cxrseg evaluate` and `predict` show beside a run's when the file is the bundled model). Nothing is written
over an input.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

from cxrseg.checkpoint import CheckpointInfo, load_checkpoint, read_info, save_checkpoint
from cxrseg.config import Settings
from cxrseg.dataset import Pair, select_pairs, unseen
from cxrseg.errors import CxrsegError
from cxrseg.inference.evaluate import evaluate_model


def kinds(settings: Settings) -> dict[str, object]:
    """What must agree between checkpoints for their average to mean anything, and for its `val` to be unseen."""
    split = (settings.data.val_fraction, settings.data.split_seed, settings.data.split_rule)
    return {"model": settings.model, "preprocess": settings.preprocess, "train/val split": split}


def check_weights(paths: list[Path], weights: list[float]) -> float:
    """The weights' sum, once they are one per checkpoint, finite, non-negative and of a finite positive sum."""
    if len(paths) != len(weights) or len(paths) < 2:
        raise SystemExit("give two or more checkpoints, and one weight for each (--weights)")
    total = sum(weights) if all(math.isfinite(w) and w >= 0 for w in weights) else math.nan
    if not (math.isfinite(total) and total > 0):
        raise SystemExit(f"weights must be finite, non-negative and of a finite positive sum, not {weights}")
    return total


def average(paths: list[Path], weights: list[float]) -> tuple[torch.nn.Module, CheckpointInfo]:
    total = check_weights(paths, weights)
    infos = [read_info(p) for p in paths]  # headers only: a checkpoint of another kind stops before any weight is read
    first = infos[0].settings
    for path, info in zip(paths[1:], infos[1:], strict=True):
        for what, value in kinds(first).items():
            if kinds(info.settings)[what] != value:
                raise SystemExit(f"{path}: its {what} settings differ from {paths[0]}'s; only one kind can be averaged")
    models = [load_checkpoint(p)[0] for p in paths]
    states = [m.state_dict() for m in models]
    merged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            merged[key] = sum(w / total * s[key].double() for w, s in zip(weights, states, strict=True)).to(value.dtype)
        else:
            merged[key] = value
    model = models[0]
    model.load_state_dict(merged)
    metrics = {
        "average_of": [str(p) for p in paths],
        "average_weights": [w / total for w in weights],
        "average_epochs": [info.epoch for info in infos],
    }
    learnt = frozenset().union(*(info.trained_on for info in infos))  # the average holds what each input learnt
    return model, CheckpointInfo(settings=first, epoch=infos[0].epoch, metrics=metrics, trained_on=learnt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--weights", type=float, nargs="+", help="one per checkpoint (default: equal)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="score the average on this folder's `val` split and record it")
    args = parser.parse_args()
    try:
        run(args.checkpoints, args.weights or [1.0] * len(args.checkpoints), args.out, args.data)
    except CxrsegError as exc:
        raise SystemExit(f"error: {exc}") from None


def is_input(out: Path, paths: list[Path]) -> bool:
    """Whether `out` names one of the inputs, by any spelling, link or case-folding of the file system."""
    if not out.exists():
        return out.resolve() in {p.resolve() for p in paths}
    return any(p.exists() and os.path.samefile(out, p) for p in paths)


def run(paths: list[Path], weights: list[float], out: Path, data: Path | None) -> None:
    check_weights(paths, weights)
    if is_input(out, paths):
        raise SystemExit(f"{out} is one of the inputs; choose another --out")
    pairs: list[Pair] = []
    if data:  # the folder is checked before any weight is read
        split = read_info(paths[0]).settings.data
        pairs = select_pairs(data, "val", split.val_fraction, split.split_seed, rule=split.split_rule)
    model, info = average(paths, weights)
    if data:
        pairs, _ = unseen(pairs, info.trained_on)  # as `cxrseg evaluate --split val` scores the average
        if not pairs:
            raise SystemExit(f"{data}: every `val` film was learnt by one of the inputs; give --data another folder")
        cfg = info.settings.inference.model_copy(update={"tta": False, "device": "cpu"})
        scored = evaluate_model(model, info.settings, pairs, cfg)
        if scored.failed:
            raise SystemExit(f"{data}: {len(scored.failed)} `val` pairs unreadable: {scored.failed[0].error}")
        dice, iou = scored.summary["dice"]["mean"], scored.summary["iou"]["mean"]
        info.metrics |= {"val_dice": dice, "val_iou": iou, "split": "val"}
        print(f"`val` of {data}: {len(pairs)} pairs, Dice {dice:.4f}, IoU {iou:.4f}")
    save_checkpoint(out, model, info)
    print(f"{out}: the average of {len(paths)} checkpoints, weights {info.metrics['average_weights']}")


if __name__ == "__main__":
    main()
