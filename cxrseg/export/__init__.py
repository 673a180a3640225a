"""Model export for runtimes other than PyTorch: ONNX with its settings attached, optionally int8."""

from cxrseg.export.onnx import ExportResult, export_onnx
from cxrseg.runtime import OnnxModel, load_onnx

__all__ = ["ExportResult", "OnnxModel", "export_onnx", "load_onnx"]
