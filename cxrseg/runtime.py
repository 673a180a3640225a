"""Running a cxrseg ONNX model with ONNX Runtime: its metadata read back, a forward pass like the U-Net's."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from cxrseg.checkpoint import CheckpointInfo, checkpoint_from_metadata, checkpoint_metadata
from cxrseg.errors import CheckpointError, ConfigError
from cxrseg.model import UNet
from cxrseg.preprocess import MARGIN_TOLERANCE, MIN_CONTENT, MIN_CONTENT_SHARE

ONNX_SUFFIX = ".onnx"
INSTALL_HINT = 'pip install "cxrseg[onnx]"'
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def require(module: str = "onnxruntime", what: str = "ONNX Runtime") -> ModuleType:
    """Import an optional ONNX package, or raise ConfigError saying how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ConfigError(f"{what} support is not installed ({exc.name} missing); run {INSTALL_HINT}.") from exc


def is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ONNX_SUFFIX


class OnnxModel:
    """A cxrseg U-Net in ONNX, run by ONNX Runtime on the CPU.

    Called with a torch tensor it behaves like the torch U-Net, so the inference engine needs no second code path.

    Shape:
        normalised image (N, 1, S, S) float32 -> logits (N, 1, S, S) float32.
    """

    def __init__(self, session: Any, info: CheckpointInfo, metadata: dict[str, str]) -> None:
        self.session, self.info, self.metadata = session, info, metadata
        self.precision = metadata.get("precision", "fp32")

    @property
    def image_size(self) -> int:
        return self.info.settings.preprocess.image_size

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, 1, S, S) z-scored images (padding 0) -> (N, 1, S, S) logits."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Lung probability per pixel: sigmoid of the logits."""
        return 1.0 / (1.0 + np.exp(-self.logits(images)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.logits(x.detach().cpu().numpy()))


def session_options(threads: int | None = None) -> Any:
    ort = require()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def load_onnx(path: Path, threads: int | None = None) -> OnnxModel:
    """Open a model written by `cxrseg export` on ONNX Runtime's CPU provider; its settings come from its metadata.

    `threads` defaults to torch's intra-op thread count. Raises CheckpointError for a missing or unreadable file
    and for an ONNX model that cxrseg did not write.
    """
    if not path.is_file():
        raise CheckpointError(f"Model {path} not found; pass --checkpoint PATH to a .onnx or .safetensors file.")
    return _open(str(path), path, threads)


def from_checkpoint(model: UNet, info: CheckpointInfo, path: Path, threads: int | None = None) -> OnnxModel:
    """A torch U-Net (loaded from `path`) exported in memory and opened on ONNX Runtime (nothing written to disk)."""
    proto = to_onnx_proto(model, info.settings.preprocess.image_size)
    for key, value in (checkpoint_metadata(info) | {"precision": "fp32"}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return _open(proto.SerializeToString(), path, threads)


def _open(source: str | bytes, path: Path, threads: int | None) -> OnnxModel:
    ort = require()
    try:
        session = ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind error types (InvalidProtobuf, Fail, ...)
        raise CheckpointError(f"{path} cannot be opened as an ONNX model ({exc}); export it again.") from exc
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    info = checkpoint_from_metadata(metadata, path, "an ONNX model")
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise CheckpointError(f"{path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found {names}.")
    return OnnxModel(session, info, metadata)


def describe_preprocessing(settings_json: str) -> str:
    """The input contract in words and numbers, stored in the ONNX metadata for readers other than cxrseg."""
    preprocess = json.loads(settings_json)["preprocess"]
    trim = {}
    if preprocess.get("trim_border"):
        trim["trim"] = (
            f"before the fit: repeatedly crop off each edge the rows, then the columns, whose grey range (max - "
            f"min, values in [0, 1]) is at most {MARGIN_TOLERANCE!r} (4/255), until none is left; keep the whole image "
            f"if nothing would remain, or under min(the side, max({MIN_CONTENT} px, ceil({MIN_CONTENT_SHARE} x the "
            "side))) along a side; the mask is zero in the cropped margins"
        )
    return json.dumps(
        {
            **preprocess,
            **trim,
            "fit": "grey values in [0, 1]; aspect-preserving bilinear resize of the long side to image_size, "
            "centred, zero padding to image_size x image_size",
            "normalize": "z-score over the non-padding pixels (std floored at 1e-3); padding set to 0",
            "input": f"'{INPUT_NAME}' float32 (batch, 1, image_size, image_size)",
            "output": f"'{OUTPUT_NAME}' float32 (batch, 1, image_size, image_size); lung = sigmoid(logits) > threshold",
        }
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter logs and warns about things that do not concern a U-Net (torchvision ops, deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx_proto(model: UNet, image_size: int):
    """The torch.export-based exporter's ModelProto: input 'image' and output 'logits', batch dimension dynamic."""
    require("onnxscript", "ONNX export")
    example = torch.zeros(2, 1, image_size, image_size)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            optimize=True,
            verbose=False,
        )
    return program.model_proto
