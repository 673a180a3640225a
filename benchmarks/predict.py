"""Benchmark `cxrseg predict`: end-to-end images/s of predict_paths vs model-only images/s, and peak RSS per N.

Usage:
    python benchmarks/predict.py                      # N=200
    python benchmarks/predict.py --n 200 --n 2000     # memory must stay flat: peak RSS within 10 %
    python benchmarks/predict.py --n 40 --checkpoint runs/<run>/best.safetensors

Each N runs in a fresh subprocess on N real 512x512 PNGs copied (cycling) from the Shenzhen set into a
temporary folder. Pipeline efficiency = end-to-end images/s / model-only images/s (target >= 0.75).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SOURCE = Path("/work/shared/data/cxr-lungs/image")


def _measure(n: int, checkpoint: Path, source: Path, batch_size: int, overlay: bool) -> dict[str, float]:
    """One N, in this process: copy inputs, time the model alone, then time predict_paths."""
    import numpy as np
    import torch

    from cxrseg.checkpoint import load_checkpoint
    from cxrseg.config import InferenceSettings
    from cxrseg.imaging import read_image
    from cxrseg.inference.engine import amp_dtype, forward_probabilities, resolve_device
    from cxrseg.inference.predict import PredictOptions, predict_paths
    from cxrseg.preprocess import fit_to_square, valid_region

    files = sorted(source.glob("*.png"))
    if not files:
        raise SystemExit(f"No PNG files in {source}; pass --source.")
    cfg = InferenceSettings(batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="cxrseg-bench-") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for index in range(n):
            shutil.copyfile(files[index % len(files)], inputs / f"{index:05d}_{files[index % len(files)].name}")

        # model only: pre-decoded tensors, same batch size, device and precision as the pipeline
        model, info = load_checkpoint(checkpoint)
        device = resolve_device(cfg.device)
        dtype = amp_dtype(device, info.settings.train.precision)
        model = model.to(device).eval()
        if device.type != "mps":
            model = model.to(memory_format=torch.channels_last)
        fitted = [fit_to_square(read_image(p), info.settings.preprocess.image_size) for p in files[:batch_size]]
        images = torch.from_numpy(np.stack([f for f, _ in fitted]))[:, None]
        valid = torch.from_numpy(np.stack([valid_region(g) for _, g in fitted]))[:, None]
        for count in {batch_size, n % batch_size or batch_size}:  # warm-up, each batch shape once
            forward_probabilities(model, images[:count], valid[:count], device, dtype, cfg.tta)
        done, start = 0, time.perf_counter()
        while done < n:
            count = min(batch_size, n - done)
            forward_probabilities(model, images[:count], valid[:count], device, dtype, cfg.tta)
            done += count
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_rate = n / (time.perf_counter() - start)
        del model

        options = PredictOptions(overlay=overlay)
        start = time.perf_counter()
        result = predict_paths([inputs], Path(tmp) / "out", checkpoint, cfg, options)
        pipeline_rate = n / (time.perf_counter() - start)
        if result.failed:
            raise SystemExit(f"{result.failed} inputs failed; first: {result.rows[0]['message']}")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"n": n, "pipeline": pipeline_rate, "model": model_rate, "rss_mb": peak_kb / 1024, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="images per run; repeat for several (default 200)")
    parser.add_argument("--checkpoint", type=Path, help="default: newest run's best in --runs-dir, else bundled")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of PNG X-rays to copy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-overlay", action="store_true", help="skip overlay pictures, as --no-overlay does")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = args.n or [200]
    if args.child:
        print(json.dumps(_measure(counts[0], args.checkpoint, args.source, args.batch_size, not args.no_overlay)))
        return
    from common import header, row, verdict, write_json

    from cxrseg.checkpoint import default_checkpoint
    from cxrseg.errors import CxrsegError
    from cxrseg.inference.engine import resolve_device

    why = f"checkpoint {args.checkpoint}"
    if args.checkpoint is None:
        try:
            args.checkpoint, why = default_checkpoint(args.runs_dir)
        except CxrsegError as exc:
            raise SystemExit(str(exc)) from exc
    overlays = "off" if args.no_overlay else "on"
    header(resolve_device("auto"), f"; {why}; batch {args.batch_size}; overlays {overlays}")
    figures: dict[str, dict[str, float]] = {}
    for n in counts:
        command = [sys.executable, __file__, "--child", "--n", str(n), "--checkpoint", str(args.checkpoint)]
        command += ["--source", str(args.source), "--batch-size", str(args.batch_size)]
        command += ["--no-overlay"] if args.no_overlay else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"N={n} failed:\n{done.stderr[-4000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["efficiency"] = r["pipeline"] / r["model"]
        figures[str(n)] = r
        row(f"pipeline N={n}", f"{r['pipeline']:.1f}", "images/s, predict_paths end to end, fresh process")
        row(f"model N={n}", f"{r['model']:.1f}", "images/s, forward_probabilities alone on pre-decoded tensors")
        row(
            f"efficiency N={n}",
            f"{r['efficiency']:.2f}",
            f"pipeline / model, target >= 0.75: {verdict(r['efficiency'] >= 0.75)}",
        )
        row(f"peak RSS N={n}", f"{r['rss_mb']:.0f}", "MB, ru_maxrss of that process")
    if len(figures) > 1:
        rss = [r["rss_mb"] for r in figures.values()]
        spread = 100 * (max(rss) - min(rss)) / min(rss)
        row("RSS spread", f"{spread:.1f}", f"% between the N values, target <= 10 %: {verdict(spread <= 10)}")
    if args.json:
        write_json(figures, args.json)


if __name__ == "__main__":
    main()
