"""Training throughput of cxrseg against the CPU's matmul ceiling and the original project's U-Net.

Run: .venv/bin/python benchmarks/train.py [--data DIR] [--steps 10] [--baseline-steps 3] [--skip-train-run]
[--json PATH]. Figures, one row each, printed as soon as measured. Other jobs may share the CPU, so every
rate is the best of its repeats (the least disturbed, like the ceiling), with the median beside it.
  ceiling bf16/fp32  GFLOP/s of a 2048x2048 torch.mm, warmed up, best over 3 s of repeats, measured before and
                     again after the models (the better pass counts): the most this CPU does.
  default            cxrseg's default model and settings (from Settings()): a full training step as
                     cxrseg/training/loop.py does it (gather from cached tensors, augment_batch, normalize, autocast,
                     channels_last, segmentation_loss, backward, AdamW, LR schedule) on synthetic images of
                     the configured size. images/s = batch / fastest step time, warm-up excluded. GFLOP/img:
                     one forward+backward counted by FlopCounterMode (convolutions; elementwise ops and the
                     optimizer are not counted); achieved GFLOP/s = GFLOP/img x images/s.
  baseline           the original project: UNet(in_channels=3, base_channels=64, depth=3), i.e. channels
                     64-128-256-512, on 3x160x240 inputs, fp32, NCHW; the same step, the grayscale batch
                     repeated to 3 channels after normalisation.
  speed-up           default / baseline images/s (target >= 15x).
  ceiling fraction   default achieved GFLOP/s / bf16 ceiling (target >= 40%); the baseline's beside it.
  train run          a real `python -m cxrseg train --epochs 1` subprocess, run first: wall time (start-up,
                     decoding, epoch, validation, checkpoints), peak RSS (getrusage(RUSAGE_CHILDREN).ru_maxrss).
  data overhead      the epoch's training seconds (images seen / images_per_s of metrics.jsonl, no validation)
                     over pure compute time for as many images at the default's images/s (target <= 1.10x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cxrseg

cxrseg.tune_cpu_runtime()  # as `cxrseg train` does, before torch is imported

import torch
from common import header, measure_ceilings, row, target_row, write_json
from torch.utils.flop_counter import FlopCounterMode

from cxrseg.assets import SAMPLE_DIR
from cxrseg.augment import augment_batch
from cxrseg.checkpoint import build_model
from cxrseg.config import Settings
from cxrseg.dataset import dataset_splits
from cxrseg.device import amp_dtype, autocast, resolve_device
from cxrseg.losses import segmentation_loss
from cxrseg.model import UNet
from cxrseg.preprocess import normalize
from cxrseg.training.schedule import lr_factor, seed_everything

SEED = 0
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-lungs"


@dataclass
class Case:
    """One model configuration to time."""

    name: str
    model: torch.nn.Module
    shape: tuple[int, int, int]  # one input image: (C, H, W)
    dtype: torch.dtype | None  # autocast dtype; None means plain fp32
    channels_last: bool


def cached_tensors(n: int, height: int, width: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Stand-in for a CachedSet: noise images in [0, 1], two elliptic 'lungs' as masks, all valid."""
    images = torch.rand(n, 1, height, width, generator=generator)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    lungs = (((xx.abs() - 0.45) / 0.3) ** 2 + (yy / 0.7) ** 2 < 1).float()
    return [images, lungs.expand(n, 1, height, width).clone(), torch.ones(n, 1, height, width)]


def train_step(case: Case, tensors, settings: Settings, device, generator, optimizer=None) -> torch.Tensor:
    """The body of cxrseg/training/loop.py's loop; without an optimizer, forward and backward only."""
    images, masks, valid = tensors
    if settings.augment.enabled:
        images, masks, valid = augment_batch(images, masks, valid, settings.augment, generator)
    x = normalize(images, valid).to(device)
    if case.shape[0] > 1:
        x = x.repeat(1, case.shape[0], 1, 1)  # baseline: the grayscale X-ray fed as RGB
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, case.dtype):
        logits = case.model(x)
    loss = segmentation_loss(logits, masks.to(device), valid.to(device), settings.train.dice_weight)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return loss


def time_training(case: Case, settings: Settings, device, batch: int, steps: int, warmup: int) -> dict:
    """images/s and achieved GFLOP/s of full training steps: fastest and median step, warm-up excluded."""
    seed_everything(SEED)
    generator = torch.Generator().manual_seed(SEED)
    cfg = settings.train
    case.model = case.model.to(device).train()
    if case.channels_last:
        case.model = case.model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(case.model.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    total = warmup + steps
    ramp = max(1, int(cfg.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, ramp))
    cache = cached_tensors(2 * batch, *case.shape[1:], generator)

    with FlopCounterMode(display=False) as counter:
        train_step(case, [t[:batch] for t in cache], settings, device, generator)
    flops_per_image = counter.get_total_flops() / batch

    seconds = []
    for step in range(total):
        started = time.perf_counter()
        index = torch.randperm(len(cache[0]), generator=generator)[:batch]
        loss = train_step(case, [t[index] for t in cache], settings, device, generator, optimizer)
        scheduler.step()
        loss.item()  # waits for the step, as training/loop.py's logging does
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
    best, median = batch / min(seconds), batch / statistics.median(seconds)
    return {
        "images_per_s": best,
        "images_per_s_median": median,
        "step_seconds": seconds,
        "gflop_per_image": flops_per_image / 1e9,
        "gflops": flops_per_image * best / 1e9,
        "gflops_median": flops_per_image * median / 1e9,
        "parameters": sum(p.numel() for p in case.model.parameters()),
    }


def report_case(case: Case, result: dict) -> None:
    precision = "fp32" if case.dtype is None else str(case.dtype).replace("torch.", "")
    layout = "channels_last" if case.channels_last else "NCHW"
    spread = f"{min(result['step_seconds']):.2f}-{max(result['step_seconds']):.2f}s"
    row(
        f"{case.name} images/s",
        f"{result['images_per_s']:.2f}",
        f"median {result['images_per_s_median']:.2f}; {'x'.join(map(str, case.shape))}, {precision}, {layout}, "
        f"{result['parameters'] / 1e6:.2f}M params; {len(result['step_seconds'])} steps of {spread}",
    )
    row(
        f"{case.name} GFLOP/s",
        f"{result['gflops']:.1f}",
        f"median {result['gflops_median']:.1f}; {result['gflop_per_image']:.2f} GFLOP/img fwd+bwd",
    )


def run_training(data: Path, batch: int, settings: Settings) -> dict:
    """One epoch of the real CLI in a subprocess: wall time, peak RSS and the epoch's training seconds.

    Call it before this process grows: Linux hands a child's ru_maxrss the parent's high-water RSS at
    fork/exec time, so it is the child's own peak only while this process is smaller than the child.
    """
    parent_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with tempfile.TemporaryDirectory(prefix="cxrseg-bench-") as runs:
        command = [sys.executable, "-m", "cxrseg", "train", "--data", str(data), "--epochs", "1"]
        command += ["--batch-size", str(batch), "--runs-dir", runs]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        metrics = sorted(Path(runs).glob("*/metrics.jsonl"))
        if done.returncode or not metrics:
            sys.exit(f"cxrseg train failed (exit {done.returncode}):\n{(done.stderr + done.stdout)[-3000:]}")
        epoch = json.loads(metrics[-1].read_text().splitlines()[-1])
    split = settings.data
    n_train = len(dataset_splits(data, split.val_fraction, split.split_seed, rule=split.split_rule)["train"])
    seen = n_train - 1 if n_train > batch and n_train % batch == 1 else n_train  # epoch_batches drops a batch of 1
    run = {
        "wall_seconds": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "parent_rss_mib": parent_mib,
        "images": seen,
        "epoch_seconds": epoch["seconds"],
        "train_seconds": seen / epoch["images_per_s"],
        "images_per_s": epoch["images_per_s"],
    }
    for name, value, note in [
        ("train run peak RSS", f"{run['peak_rss_mib']:.0f} MiB", f"`cxrseg train --epochs 1` on {data}"),
        ("train run wall", f"{wall:.1f} s", f"start-up, decoding, epoch of {epoch['seconds']:.1f}s incl. validation"),
        ("epoch training", f"{run['train_seconds']:.1f} s", f"{seen} images at {epoch['images_per_s']:.2f} images/s"),
    ]:
        row(name, value, note)
    return run


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = SHARED_DATA if SHARED_DATA.is_dir() else SAMPLE_DIR
    parser.add_argument("--data", type=Path, default=default_data, help=f"dataset (default {default_data})")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the default model")
    parser.add_argument("--baseline-steps", type=int, default=3, help="timed steps of the slow baseline")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-train-run", action="store_true", help="skip the `cxrseg train` subprocess")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(SEED)
    settings = Settings()
    device = resolve_device(settings.train.device)
    batch = args.batch_size
    header(device, f", batch {batch}")
    figures: dict = {"batch_size": batch, "load_average": os.getloadavg(), "data": str(args.data)}
    if not args.skip_train_run:  # first, while this process is small (see run_training)
        figures["train_run"] = run_training(args.data, batch, settings)

    ceilings = measure_ceilings()
    size, precision = settings.preprocess.image_size, amp_dtype(device, settings.train.precision)
    default = Case("default", build_model(settings), (1, size, size), precision, settings.train.channels_last)
    figures["default"] = time_training(default, settings, device, batch, args.steps, warmup=2)
    report_case(default, figures["default"])
    if precision is not None:  # the fp32 path, as on CPUs without native bf16, measured in the same run
        fp32 = Case("default fp32", build_model(settings), (1, size, size), None, settings.train.channels_last)
        figures["default_fp32"] = time_training(fp32, settings, device, batch, args.steps, warmup=2)
        report_case(fp32, figures["default_fp32"])

    baseline = Case("baseline", UNet(in_channels=3, base_channels=64, depth=3), (3, 160, 240), None, False)
    # the original project's step had no augmentation (and cxrseg's opacities assume square inputs)
    plain = settings.model_copy(update={"augment": settings.augment.model_copy(update={"enabled": False})})
    figures["baseline"] = time_training(baseline, plain, device, batch, args.baseline_steps, warmup=1)
    report_case(baseline, figures["baseline"])
    figures["ceiling_gflops"] = ceilings = measure_ceilings(ceilings)  # again, in case other jobs slowed the first

    new, old = figures["default"], figures["baseline"]
    own = "bf16" if precision == torch.bfloat16 else "fp32"  # each run against the ceiling of what it computes in
    speedup, fraction = new["images_per_s"] / old["images_per_s"], new["gflops"] / ceilings[own]
    figures |= {"speedup": speedup, "ceiling_fraction": fraction, "ceiling_precision": own}
    median = new["images_per_s_median"] / old["images_per_s_median"]
    target_row("speed-up", "{:.1f}x", speedup, median, "default / baseline images/s; target >= 15x", speedup >= 15)
    baseline = f"baseline {old['gflops'] / ceilings['fp32']:.1%} of the fp32 ceiling"
    what = f"default / {own} ceiling ({baseline}); target >= 40%"
    target_row("ceiling fraction", "{:.1%}", fraction, new["gflops_median"] / ceilings[own], what, fraction >= 0.4)
    if fp32 := figures.get("default_fp32"):
        fraction32 = fp32["gflops"] / ceilings["fp32"]
        figures |= {"fp32_ceiling_fraction": fraction32, "fp32_speedup": fp32["images_per_s"] / old["images_per_s"]}
        what = f"default in fp32 / fp32 ceiling; {figures['fp32_speedup']:.1f}x the baseline; target >= 40%"
        target_row(
            "fp32 fraction", "{:.1%}", fraction32, fp32["gflops_median"] / ceilings["fp32"], what, fraction32 >= 0.4
        )

    if run := figures.get("train_run"):
        run["compute_seconds"] = compute = run["images"] / new["images_per_s"]
        median = run["images"] / new["images_per_s_median"]
        row("pure compute", f"{compute:.1f} s", f"median {median:.1f} s; as many images at the default's images/s")
        run["overhead_ratio"] = ratio = run["train_seconds"] / compute
        what = "epoch training / pure compute; target <= 1.10x"
        target_row("data overhead", "{:.2f}x", ratio, run["train_seconds"] / median, what, ratio <= 1.10)

    if args.json:
        write_json(figures, args.json)


if __name__ == "__main__":
    main()
