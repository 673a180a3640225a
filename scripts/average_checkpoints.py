"""Average the weights of cxrseg checkpoints of one model shape: python scripts/average_checkpoints.py A B --out C.

Every floating-point tensor (convolution weights, batch-norm scales, shifts and running statistics) becomes the
weighted mean of the inputs' tensors; integer tensors (batch-norm step counts) are taken from the first input. The
inputs must describe the same U-Net and the same preprocessing (a fine-tune and the model it started from, say);
the output keeps the first input's settings and records its sources and weights in its metrics. With --data, the
average is scored on the `val` split of that folder by the first input's split rule, as training would score it,
and the Dice and IoU are recorded too (`cxrseg evaluate` and `predict` show them). Nothing is written over an input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cxrseg.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from cxrseg.config import InferenceSettings
from cxrseg.dataset import select_pairs
from cxrseg.inference.evaluate import evaluate_model


def average(paths: list[Path], weights: list[float]) -> tuple[torch.nn.Module, CheckpointInfo]:
    if len(paths) != len(weights) or len(paths) < 2:
        raise SystemExit("give two or more checkpoints, and one weight for each (--weights)")
    if min(weights) < 0 or sum(weights) <= 0:
        raise SystemExit(f"weights must be non-negative with a positive sum, not {weights}")
    models, infos = zip(*(load_checkpoint(p) for p in paths), strict=True)
    first = infos[0].settings
    for path, info in zip(paths[1:], infos[1:], strict=True):
        for part in ("model", "preprocess"):
            if getattr(info.settings, part) != getattr(first, part):
                raise SystemExit(f"{path}: its {part} settings differ from {paths[0]}'s; one shape only")
    total = sum(weights)
    states = [m.state_dict() for m in models]
    merged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            merged[key] = sum(w / total * s[key].double() for w, s in zip(weights, states, strict=True)).to(value.dtype)
        else:
            merged[key] = value
    model = models[0]
    model.load_state_dict(merged)
    metrics = {"average_of": [str(p) for p in paths], "average_weights": [w / total for w in weights]}
    return model, CheckpointInfo(settings=first, epoch=infos[0].epoch, metrics=metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--weights", type=float, nargs="+", help="one per checkpoint (default: equal)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="score the average on this folder's `val` split and record it")
    args = parser.parse_args()
    if args.out.resolve() in {p.resolve() for p in args.checkpoints}:
        raise SystemExit(f"{args.out} is one of the inputs; choose another --out")
    weights = args.weights or [1.0] * len(args.checkpoints)
    model, info = average(args.checkpoints, weights)
    if args.data:
        data = info.settings.data
        pairs = select_pairs(args.data, "val", data.val_fraction, data.split_seed)
        scored = evaluate_model(model, info.settings, pairs, InferenceSettings(device="cpu"))
        if scored.failed:
            raise SystemExit(
                f"{len(scored.failed)} `val` pairs of {args.data} could not be read: {scored.failed[0].error}"
            )
        dice, iou = scored.summary["dice"]["mean"], scored.summary["iou"]["mean"]
        info.metrics |= {"val_dice": dice, "val_iou": iou, "split": "val"}
        print(f"`val` of {args.data}: {len(pairs)} pairs, Dice {dice:.4f}, IoU {iou:.4f}")
    save_checkpoint(args.out, model, info)
    print(f"{args.out}: the average of {len(args.checkpoints)} checkpoints, weights {info.metrics['average_weights']}")


if __name__ == "__main__":
    main()
