"""Self-contained HTML review reports of predict and evaluate runs: Jinja2 pages, thumbnails beside them."""

from cxrseg.report.evaluate import ErrorMaps, EvaluateRecord, write_evaluate_report
from cxrseg.report.images import error_map, save_error_map
from cxrseg.report.predict import write_predict_report

__all__ = [
    "ErrorMaps",
    "EvaluateRecord",
    "error_map",
    "save_error_map",
    "write_evaluate_report",
    "write_predict_report",
]
