"""One file streamed over HTTP to disk across attempts: Range resume, size cap, deadline and minimum speed."""

from __future__ import annotations

import http.client
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import BinaryIO

from cxrseg import __version__
from cxrseg.config import DownloadSettings
from cxrseg.download.kaggle import http_message
from cxrseg.errors import DownloadError

Progress = Callable[[int, int | None], None]
CHUNK_BYTES = 1 << 16


class Retryable(Exception):
    """A failure worth another attempt: connection error, timeout, HTTP 5xx/429 or a body cut short."""


class Stalled(Retryable):
    """Slower than download.min_speed: retried, but never counted as progress (a trickle would earn fresh
    retries forever)."""


class Transfer:
    """One file streamed to disk across attempts; `done` bytes are on disk, `total` is None when unknown."""

    def __init__(
        self,
        url: str,
        out: BinaryIO,
        headers: Mapping[str, str],
        settings: DownloadSettings,
        on_progress: Progress | None,
        kaggle_dataset: str | None,
    ):
        self.url, self.out, self.headers, self.settings = url, out, headers, settings
        self.on_progress, self.kaggle_dataset = on_progress, kaggle_dataset
        self.done, self.total = 0, None
        self.deadline = time.monotonic() + settings.deadline

    def _restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.done = 0

    def _open(self) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.url, headers={"User-Agent": f"cxrseg/{__version__}"})
        for name, value in self.headers.items():
            request.add_unredirected_header(name, value)  # never forward credentials to a storage redirect
        if self.done:
            request.add_header("Range", f"bytes={self.done}-")
        try:
            return urllib.request.urlopen(request, timeout=self.settings.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code == 429:
                raise Retryable(f"HTTP {exc.code}") from exc
            if exc.code == 416 and self.done:  # our range is past the end: start over
                self._restart()
                raise Retryable("HTTP 416 on resume") from exc
            raise DownloadError(http_message(exc.code, self.url, self.kaggle_dataset)) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise Retryable(str(getattr(exc, "reason", exc)) or type(exc).__name__) from exc

    def _announce(self, total: int | None) -> None:
        if self.total is not None and total is not None and total != self.total:
            raise DownloadError(
                f"{self.url} changed size during the download ({self.total} then {total} bytes); "
                "the partial file was deleted, run again."
            )
        self.total = total if total is not None else self.total
        self._check_size(self.total or 0)

    def _check_size(self, size: int) -> None:
        if size > (cap := self.settings.max_download_bytes):
            raise DownloadError(
                f"{self.url} is more than {cap} bytes, the download.max_download_bytes limit; the partial file was "
                "deleted. Raise CXRSEG_DOWNLOAD__MAX_DOWNLOAD_BYTES if you expect a file this large."
            )

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            got = f" of {self.total}" if self.total else ""
            raise DownloadError(
                f"Download of {self.url} not finished after {self.settings.deadline:g} s, the download.deadline limit "
                f"({self.done}{got} bytes); the partial file was deleted. Check your connection or raise "
                "CXRSEG_DOWNLOAD__DEADLINE."
            )

    def _stream(self, response: http.client.HTTPResponse) -> None:
        """Copy the body to disk; stops at the size cap and the deadline, and below the minimum speed."""
        window_start, window_done = time.monotonic(), self.done
        while chunk := response.read1(CHUNK_BYTES):  # read1: whatever arrived, so a trickle is seen
            self.out.write(chunk)
            self.done += len(chunk)
            self._check_size(self.done)
            self.check_deadline()
            if (elapsed := time.monotonic() - window_start) >= self.settings.speed_window:
                if (speed := (self.done - window_done) / elapsed) < self.settings.min_speed:
                    raise Stalled(
                        f"{speed:.0f} bytes/s over {elapsed:.1f} s, slower than {self.settings.min_speed} bytes/s, "
                        "the download.min_speed limit; lower CXRSEG_DOWNLOAD__MIN_SPEED for a slow link"
                    )
                window_start, window_done = time.monotonic(), self.done
            if self.on_progress:
                self.on_progress(self.done, self.total)

    def attempt(self) -> None:
        """Fetch what is missing; returns when complete, raises Retryable when worth another try."""
        self.check_deadline()
        with self._open() as response:
            length = response.headers.get("Content-Length")
            if self.done and response.status == 206:
                match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
                if not match or int(match[1]) != self.done:
                    self._restart()
                    raise Retryable("the server sent an unexpected range")
                self._announce(None if match[2] == "*" else int(match[2]))
            else:  # 200: a full body, also when the server ignored our Range
                self._restart()
                self._announce(int(length) if length and length.isdigit() else None)
            if self.on_progress:  # tells the bar the total, or that a restart went back to 0
                self.on_progress(self.done, self.total)
            try:
                self._stream(response)
            except (TimeoutError, ConnectionError, ssl.SSLError, http.client.HTTPException) as exc:
                raise Retryable(f"connection lost after {self.done} bytes ({exc!r})") from exc
        if self.total is not None and self.done < self.total:  # http.client reads short bodies without error
            raise Retryable(f"connection closed after {self.done} of {self.total} bytes")
