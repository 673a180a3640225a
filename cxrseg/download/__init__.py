"""Getting the dataset: HTTP with resume and retries, Kaggle credentials, and safe archive extraction."""

from cxrseg.download.http import DownloadResult, download_dataset

__all__ = ["DownloadResult", "download_dataset"]
