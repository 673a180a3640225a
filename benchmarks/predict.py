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
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cxrseg

cxrseg.tune_cpu_runtime()  # as `cxrseg predict` does, before torch is imported (here or by common)

from common import header, row, verdict, write_json

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared/data/cxr-lungs/image"
REFERENCE = Path(__file__).with_name("predict_masks.json")  # masks by earlier code: regressions show as mismatches


def _masks_digest(folder: Path) -> str:
    """sha256 over every mask file, in name order: equal digests mean byte-identical masks."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.mask.png")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _model_rate(engine, files: list[Path], n: int) -> float:
    """images/s of the engine's forward pass alone, on pre-decoded tensors of the same batch size."""
    import torch

    from cxrseg.imaging import read_image
    from cxrseg.inference.engine import fit_image, stack

    batch_size = engine.cfg.batch_size
    images, valid = stack([fit_image(read_image(p), engine.size, engine.trim) for p in files[:batch_size]])
    for count in {batch_size, n % batch_size or batch_size}:  # warm-up, each batch shape once
        engine.forward(images[:count], valid[:count])
    done, start = 0, time.perf_counter()
    while done < n:
        count = min(batch_size, n - done)
        engine.forward(images[:count], valid[:count])
        done += count
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def _measure(
    n: int, checkpoint: Path, source: Path, batch_size: int, overlay: bool, workers: int | None, backend: str
) -> dict:
    """One N, in this process: copy inputs, time the model alone, then time predict_paths."""
    from cxrseg.config import InferenceSettings
    from cxrseg.inference.backend import choose_backend
    from cxrseg.inference.engine import load_engine
    from cxrseg.inference.predict import PredictOptions, predict_paths

    files = sorted(source.glob("*.png"))
    if not files:
        raise SystemExit(f"No PNG files in {source}; pass --source.")
    cfg = InferenceSettings(batch_size=batch_size, backend=backend)
    with tempfile.TemporaryDirectory(prefix="cxrseg-bench-") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for index in range(n):
            shutil.copyfile(files[index % len(files)], inputs / f"{index:05d}_{files[index % len(files)].name}")
        options = PredictOptions(overlay=overlay, **({"workers": workers} if workers is not None else {}))
        start, before = time.perf_counter(), _cpu_seconds()  # first, as in a fresh `cxrseg predict` process
        result = predict_paths([inputs], Path(tmp) / "out", checkpoint, cfg, options)
        pipeline_rate = n / (time.perf_counter() - start)
        pipeline_cpu = _cpu_seconds() - before  # the worker processes count once they have ended
        engine, _ = load_engine(checkpoint, cfg, n)  # the backend predict_paths picks for n inputs
        before = _cpu_seconds()
        model_rate = _model_rate(engine, files, n)
        model_cpu = _cpu_seconds() - before
        chosen = choose_backend(checkpoint, cfg, n)
        device = f"{engine.device}, {chosen}"
        del engine
        if result.failed:
            raise SystemExit(f"{result.failed} inputs failed; first: {result.rows[0]['message']}")
        digest = _masks_digest(Path(tmp) / "out")
        masks = {
            p.name.split("_", 1)[1][: -len(".mask.png")]: _file_sha(p) for p in (Path(tmp) / "out").glob("*.mask.png")
        }
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest worker process
    return {
        "n": n,
        "pipeline": pipeline_rate,
        "model": model_rate,
        "rss_mb": peak_kb / 1024,
        "model_cpu_ms": 1000 * model_cpu / n,
        "pipeline_cpu_ms": 1000 * pipeline_cpu / n,
        "worker_rss_mb": children_kb / 1024,
        "device": device,
        "backend": chosen,
        "masks_sha256": digest,
        "masks": masks,
    }


def _cpu_seconds() -> float:
    """CPU time of this process and of its ended children (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_key(checkpoint: Path) -> str:
    """sha256 of a checkpoint's weights and settings (the file's metadata order may vary between saves)."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(checkpoint), "np") as weights:
        digest.update(weights.metadata().get("settings", "").encode())
        for key in sorted(weights.keys()):
            digest.update(key.encode() + weights.get_tensor(key).tobytes())
    return digest.hexdigest()


def _default_settings_checkpoint(folder: Path) -> Path:
    """A seeded, untrained model with the default training settings: the default architecture's speed."""
    import torch

    from cxrseg.checkpoint import CheckpointInfo, build_model, save_checkpoint
    from cxrseg.config import Settings

    torch.manual_seed(0)
    path = folder / "default-settings.safetensors"
    save_checkpoint(path, build_model(Settings()), CheckpointInfo(settings=Settings()))
    return path


def write_reference(checkpoint: Path, source: Path, path: Path, backend: str = "auto") -> None:
    """Masks of every source file by this installation's predict_paths, as {source name: sha256}."""
    from cxrseg.config import InferenceSettings
    from cxrseg.inference.backend import choose_backend
    from cxrseg.inference.predict import PredictOptions, predict_paths

    cfg = InferenceSettings(backend=backend)
    with tempfile.TemporaryDirectory(prefix="cxrseg-ref-") as tmp:
        predict_paths([source], Path(tmp), checkpoint, cfg, options=PredictOptions(overlay=False))
        masks = {p.name[: -len(".mask.png")]: _file_sha(p) for p in Path(tmp).glob("*.mask.png")}
    refs = json.loads(path.read_text()) if path.is_file() else {}
    refs[f"{_model_key(checkpoint)} {choose_backend(checkpoint, cfg, len(masks))}"] = dict(sorted(masks.items()))
    path.write_text(json.dumps(refs, indent=1) + "\n")


def _check_masks(r: dict, checkpoint: Path, reference: Path) -> str:
    """Compare a run's masks with the stored ones for the same checkpoint and source files."""
    stored = json.loads(reference.read_text()) if reference.is_file() else {}
    key = _model_key(checkpoint)  # masks differ between backends (bf16 torch, fp32 ONNX Runtime): one set each
    refs = stored.get(f"{key} {r['backend']}") or (stored.get(key) if r["backend"] == "torch" else None)
    if refs is None:
        return f"no stored reference for this checkpoint on {r['backend']}"
    wrong = [name for name, sha in r["masks"].items() if refs.get(name) != sha]
    return f"{len(r['masks']) - len(wrong)}/{len(r['masks'])} byte-identical: " + verdict(not wrong)


def _run_child(n: int, checkpoint: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--n", str(n), "--checkpoint", str(checkpoint)]
    command += ["--source", str(args.source), "--batch-size", str(args.batch_size)]
    command += ["--no-overlay"] if args.no_overlay else []
    command += ["--workers", str(args.workers)] if args.workers is not None else []
    command += ["--backend", args.backend]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"N={n} failed:\n{done.stderr[-4000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["efficiency"] = r["pipeline"] / r["model"]
    return r


def _report(name: str, n: int, r: dict, checkpoint: Path, reference: Path) -> None:
    row(f"{name} pipeline N={n}", f"{r['pipeline']:.1f}", f"images/s, predict_paths end to end ({r['device']})")
    row(f"{name} model N={n}", f"{r['model']:.1f}", "images/s, the engine's forward pass alone, same process")
    ok = verdict(r["efficiency"] >= 0.75)
    row(f"{name} efficiency N={n}", f"{r['efficiency']:.2f}", f"pipeline / model, target >= 0.75: {ok}")
    cpu = f"{r['pipeline_cpu_ms']:.0f}"
    bound = r["model_cpu_ms"] / r["pipeline_cpu_ms"]
    row(
        f"{name} CPU per image N={n}",
        cpu,
        f"ms, end to end; the model alone {r['model_cpu_ms']:.0f} ms: bound {bound:.2f}",
    )
    row(f"{name} peak RSS N={n}", f"{r['rss_mb']:.0f}", f"MB main process; largest worker {r['worker_rss_mb']:.0f} MB")
    row(f"{name} masks N={n}", r["masks_sha256"][:12], _check_masks(r, checkpoint, reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="images per run; repeat for several (default 200)")
    parser.add_argument("--checkpoint", type=Path, help="default: newest run's best in --runs-dir, else bundled")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of PNG X-rays to copy")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-overlay", action="store_true", help="skip overlay pictures, as --no-overlay does")
    parser.add_argument("--workers", type=int, help="predict's worker processes (default: one per core, <= 4)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime"],
        help="torch, onnxruntime or auto (ORT from 500 inputs on CPU)",
    )
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="stored mask digests to compare with")
    parser.add_argument("--write-reference", action="store_true", help="store this installation's masks")
    parser.add_argument("--default-checkpoint", type=Path, help=argparse.SUPPRESS)  # a stored one, for references
    parser.add_argument("--default-settings", action="store_true", help="also an untrained default-settings model")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = args.n or [200]
    if args.child:
        r = _measure(
            counts[0], args.checkpoint, args.source, args.batch_size, not args.no_overlay, args.workers, args.backend
        )
        print(json.dumps(r))
        return
    from cxrseg.checkpoint import default_checkpoint
    from cxrseg.errors import CxrsegError

    why = f"checkpoint {args.checkpoint}"
    if args.checkpoint is None:
        try:
            args.checkpoint, why = default_checkpoint(args.runs_dir)
        except CxrsegError as exc:
            raise SystemExit(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="cxrseg-bench-ckpt-") as tmp:
        models = {"given": args.checkpoint}
        if args.default_settings:
            models["default"] = args.default_checkpoint or _default_settings_checkpoint(Path(tmp))
        if args.write_reference:
            for path in models.values():
                write_reference(path, args.source, args.reference, args.backend)
            print(f"reference masks written to {args.reference}")
            return
        from cxrseg.device import resolve_device

        overlays = "off" if args.no_overlay else "on"
        header(resolve_device("auto"), f"; {why}; batch {args.batch_size}; overlays {overlays}")
        figures: dict[str, dict] = {}
        for name, path in models.items():
            for n in counts:
                r = figures[f"{name} {n}"] = _run_child(n, path, args)
                _report(name, n, r, path, args.reference)
            rss = [figures[f"{name} {n}"]["rss_mb"] for n in counts]
            if len(rss) > 1:
                spread = 100 * (max(rss) - min(rss)) / min(rss)
                row(f"{name} RSS spread", f"{spread:.1f}", f"% across N, target <= 10 %: {verdict(spread <= 10)}")
    if args.json:
        write_json(figures, args.json)


if __name__ == "__main__":
    main()
