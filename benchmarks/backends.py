"""Benchmark the forward-pass backends: torch fp32, torch bf16 autocast, ONNX Runtime fp32 and int8.

Usage:
    python benchmarks/backends.py                       # bundled model, Shenzhen test pairs, batch 16
    python benchmarks/backends.py --checkpoint runs/<run>/best.safetensors --rounds 20

Prints, for each backend in one run: model throughput (images/s on pre-decoded batches of the checkpoint's
image size, rounds interleaved so that other load on the machine hits every backend alike) and Dice on the
test pairs through evaluate_model, which shares decoding, preprocessing and post-processing across backends.
int8 is calibrated on the training split (image/) and may lose at most 0.002 Dice against ONNX Runtime fp32.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cxrseg

cxrseg.tune_cpu_runtime()  # as `cxrseg predict` does, before torch is imported

import torch
from common import header, row, verdict

from cxrseg.assets import BUNDLED_MODEL
from cxrseg.checkpoint import load_checkpoint
from cxrseg.config import InferenceSettings
from cxrseg.config_sources import with_overrides
from cxrseg.dataset import select_pairs
from cxrseg.device import cpu_has_bf16
from cxrseg.export import export_onnx, load_onnx
from cxrseg.export.calibration import model_inputs, sample_images
from cxrseg.inference.backend import place
from cxrseg.inference.engine import forward_probabilities
from cxrseg.inference.evaluate import evaluate_model

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-lungs"
MAX_INT8_LOSS = 0.002


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def variants(checkpoint: Path, work: Path, calibration: Path) -> dict[str, tuple[object, object]]:
    """name -> (model, settings) for every backend this CPU can run."""
    model, info = load_checkpoint(checkpoint)
    out: dict[str, tuple[object, object]] = {}
    out["torch fp32"] = (model, with_overrides(info.settings, {"train": {"precision": "fp32"}}))
    if cpu_has_bf16():
        out["torch bf16"] = (model, with_overrides(info.settings, {"train": {"precision": "bf16"}}))
    for name, int8 in (("ORT fp32", False), ("ORT int8", True)):
        result = export_onnx(checkpoint, work / f"{name.split()[1]}.onnx", int8=int8, calibration=calibration)
        note = f"{result.size_bytes / 1e6:.1f} MB, max |p - p_torch| {result.max_abs_diff:.2g} on the sample"
        print(f"exported {name}: {note}, {result.calibration_images} calibration images", flush=True)
        onnx_model = load_onnx(result.path)
        out[name] = (onnx_model, onnx_model.info.settings)
    return out


def throughput(models: dict, batch: int, rounds: int, per_round: int) -> dict[str, list[float]]:
    """images/s per round for each variant; rounds interleave the variants."""
    size = next(iter(models.values()))[1].preprocess.image_size
    paths = (sample_images() * batch)[:batch]
    images, valid = model_inputs(paths, size)
    cfg = InferenceSettings(device="cpu", batch_size=batch)
    placed = {name: place(model, settings, cfg) for name, (model, settings) in models.items()}
    rates: dict[str, list[float]] = {name: [] for name in placed}
    for round_number in range(rounds + 1):
        for name, p in placed.items():
            start = time.perf_counter()
            for _ in range(per_round):
                forward_probabilities(p.model, images, valid, p.device, p.dtype)
            if round_number:  # round 0 warms up
                rates[name].append(batch * per_round / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--data", type=Path, default=DATA, help="dataset with image/ (calibration) and test pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=4, help="batches per timed round")
    args = parser.parse_args()
    header(torch.device("cpu"), f"; {cpu_name()}; checkpoint {args.checkpoint}; batch {args.batch_size}")
    with tempfile.TemporaryDirectory(prefix="cxrseg-backends-") as work:
        models = variants(args.checkpoint, Path(work), args.data)
        rates = throughput(models, args.batch_size, args.rounds, args.per_round)
        pairs = select_pairs(args.data, "test")
        cfg = InferenceSettings(device="cpu", batch_size=args.batch_size)
        dice = {
            name: evaluate_model(model, settings, pairs, cfg).summary["dice"]["mean"]
            for name, (model, settings) in models.items()
        }
    base = statistics.median(rates["torch fp32"])
    for name, values in rates.items():
        best, median = max(values), statistics.median(values)
        row(name, f"{median:.1f}", f"images/s median (best {best:.1f}), x{median / base:.2f} torch fp32")
    for name, value in dice.items():
        row(f"Dice {name}", f"{value:.4f}", f"{len(pairs)} test pairs")
    loss = dice["ORT fp32"] - dice["ORT int8"]
    row("int8 Dice loss", f"{loss:.4f}", f"vs ORT fp32, target <= {MAX_INT8_LOSS}: {verdict(loss <= MAX_INT8_LOSS)}")
    fastest = max(rates, key=lambda name: statistics.median(rates[name]))
    gain = statistics.median(rates["ORT int8"]) / statistics.median(rates["ORT fp32"])
    pays = gain > 1.05 and loss <= MAX_INT8_LOSS
    row("int8 pays", "yes" if pays else "no", f"x{gain:.2f} ORT fp32 throughput; fastest overall: {fastest}")


if __name__ == "__main__":
    main()
