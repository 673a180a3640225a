"""download_dataset against a real HTTP server on 127.0.0.1 serving tiny Kaggle-layout archives."""

from __future__ import annotations

import base64
import bz2
import errno
import gzip
import hashlib
import io
import json
import lzma
import re
import socket
import stat
import tarfile
import threading
import time
import types
import warnings
import zipfile
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg.config import DownloadSettings
from cxrseg.dataset import dataset_splits
from cxrseg.download import DownloadResult, destination, download_dataset, extract, http
from cxrseg.errors import DownloadError

KAGGLE_PATH = "/api/v1/datasets/download/newra008/chest-segmentation-image"
FULL_COUNTS = {"image": 3, "mask": 3, "test_image": 2, "test_mask": 2}


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@cache
def dataset_files(n_train: int = 3, n_test: int = 2) -> dict[str, bytes]:
    """Kaggle layout: RGB image/*.png with JPEG mask/*.jpeg, 32x32."""
    rng = np.random.default_rng(n_train)
    yy, xx = np.mgrid[:32, :32]
    files = {}
    for image_dir, mask_dir, n in (("image", "mask", n_train), ("test_image", "test_mask", n_test)):
        for i in range(n):
            files[f"{image_dir}/{i}.png"] = _encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "PNG")
            ellipse = ((yy - 16) / (6 + i)) ** 2 + ((xx - 16) / 10) ** 2 <= 1
            files[f"{mask_dir}/{i}.jpeg"] = _encode(ellipse.astype(np.uint8) * 255, "JPEG")
    return files


def zip_bytes(files: dict[str, bytes], prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], prefix: str = "", extra: list[tarfile.TarInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, *args: object) -> None:
        pass


def send_body(handler: Handler, data: bytes, *, honour_range: bool = True, cut: bool = False) -> None:
    """Send `data` (from the Range start when asked); `cut` closes after half the announced bytes."""
    start = 0
    match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
    if match and honour_range:
        start = int(match[1])
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        handler.send_response(200)
    body = data[start:]
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body[: len(body) // 2] if cut else body)


def send_status(code: int):
    def route(handler: Handler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


class Server:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes, self.httpd.requests = {}, []
        self.routes, self.requests = self.httpd.routes, self.httpd.requests
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def serve(self, path: str, data: bytes) -> str:
        self.routes[path] = lambda handler: send_body(handler, data)
        return self.url(path)


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def fast_and_local(monkeypatch):
    monkeypatch.setattr(http, "backoff_seconds", 0.01)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def settings() -> DownloadSettings:
    return DownloadSettings(retries=3, timeout=5)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "data" / "lungs"


def assert_clean(dest: Path, present: bool) -> None:
    """The parent holds the dataset folder (or nothing): no temporary or partial leftovers."""
    parent = dest.parent
    entries = sorted(p.name for p in parent.iterdir()) if parent.exists() else []
    assert entries == ([dest.name] if present else [])
    if present:
        assert sorted(p.name for p in dest.iterdir()) == [
            destination.MARKER,
            "image",
            "mask",
            "test_image",
            "test_mask",
        ]


def assert_dataset(result: DownloadResult, dest: Path, counts: dict[str, int] = FULL_COUNTS) -> None:
    assert result.dest == dest and not result.already_present
    assert result.counts == counts
    assert (dest / "image" / "0.png").is_file() and (dest / "test_mask" / "1.jpeg").is_file()
    splits = dataset_splits(dest)
    assert len(splits["train"]) + len(splits["val"]) == counts["image"]  # every installed pair is found
    assert len(splits["test"]) == counts["test_image"]
    assert_clean(dest, present=True)


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def test_kaggle_download_with_kaggle_json_redirect_progress_and_sha256(server, settings, dest, tmp_path):
    data = zip_bytes(dataset_files())
    token = tmp_path / "kaggle.json"
    token.write_text(json.dumps({"username": "alice", "key": "s3cret"}))

    def kaggle(handler: Handler) -> None:
        ok = handler.headers.get("Authorization") == basic("alice", "s3cret")
        handler.send_response(302 if ok else 401)
        handler.send_header("Location", "/storage/signed.zip")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server.routes[KAGGLE_PATH] = kaggle
    server.serve("/storage/signed.zip", data)
    progress = []
    result = download_dataset(
        settings,
        dest,
        sha256=hashlib.sha256(data).hexdigest(),
        env={},
        kaggle_json=token,
        kaggle_base_url=server.url("/api/v1"),
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert_dataset(result, dest)
    assert result.source == server.url(KAGGLE_PATH)
    assert progress[-1] == (len(data), len(data))
    assert [path for path, _ in server.requests] == [KAGGLE_PATH, "/storage/signed.zip"]
    assert server.requests[1][1].get("Authorization") is None  # credentials stay with Kaggle


@pytest.mark.parametrize("honour_range", [True, False])
def test_dropped_connection_resumes(server, dest, honour_range):
    data = zip_bytes(dataset_files())
    calls = []

    def flaky(handler: Handler) -> None:
        calls.append(handler.headers.get("Range"))
        send_body(handler, data, honour_range=honour_range, cut=len(calls) == 1)

    server.routes["/ds.zip"] = flaky
    progress = []
    settings = DownloadSettings(retries=0)  # a retry that made progress does not count against the limit
    result = download_dataset(settings, dest, url=server.url("/ds.zip"), on_progress=lambda d, t: progress.append(d))
    assert_dataset(result, dest)
    assert calls == [None, f"bytes={len(data) // 2}-"]
    assert progress[-1] == len(data)
    # a 206 continues from the half; a 200 (Range ignored) starts the file over
    assert progress.count(0) == (1 if honour_range else 2)


def test_server_errors_retried_with_backoff(server, settings, dest, monkeypatch):
    data = zip_bytes(dataset_files())
    sleeps = []
    monkeypatch.setattr(http, "time", types.SimpleNamespace(sleep=sleeps.append))
    answers = iter([send_status(500), send_status(500)])
    server.routes["/ds.zip"] = lambda handler: next(answers, lambda h: send_body(h, data))(handler)
    result = download_dataset(settings, dest, url=server.url("/ds.zip"))
    assert_dataset(result, dest)
    assert len(server.requests) == 3
    assert sleeps == [0.01, 0.02]


def test_server_errors_give_up_after_retries(server, dest):
    server.routes["/ds.zip"] = send_status(503)
    with pytest.raises(DownloadError, match=r"HTTP 503.*Check your network") as info:
        download_dataset(DownloadSettings(retries=1), dest, url=server.url("/ds.zip"))
    assert "after 2 failed attempts" in str(info.value)
    assert len(server.requests) == 2
    assert_clean(dest, present=False)


def test_url_not_found(server, settings, dest):
    with pytest.raises(DownloadError, match=r"not found \(HTTP 404\); check the --url"):
        download_dataset(settings, dest, url=server.url("/missing.zip"))
    assert len(server.requests) == 1  # a 404 is not retried
    assert_clean(dest, present=False)


def test_kaggle_401_says_check_credentials_and_terms(server, settings, dest, tmp_path):
    server.routes[KAGGLE_PATH] = send_status(401)
    env = {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "wrong"}
    with pytest.raises(DownloadError) as info:
        download_dataset(
            settings, dest, env=env, kaggle_json=tmp_path / "no.json", kaggle_base_url=server.url("/api/v1")
        )
    message = str(info.value)
    assert "HTTP 401" in message and "KAGGLE_USERNAME" in message
    assert "accept the dataset's terms on https://www.kaggle.com/datasets/newra008/chest-segmentation-image" in message
    assert [(p, h.get("Authorization")) for p, h in server.requests] == [(KAGGLE_PATH, basic("alice", "wrong"))]
    assert_clean(dest, present=False)


def test_no_credentials(server, settings, dest, tmp_path):
    with pytest.raises(DownloadError, match=r"No Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY"):
        download_dataset(settings, dest, env={}, kaggle_json=tmp_path / "none.json", kaggle_base_url=server.url(""))
    assert server.requests == []
    assert_clean(dest, present=False)


def test_no_network(dest):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=r"after 2 failed attempts .*Check your network connection"):
        download_dataset(DownloadSettings(retries=1), dest, url=f"http://127.0.0.1:{port}/ds.zip")
    assert_clean(dest, present=False)


def test_wrong_sha256_deletes_partial(server, settings, dest):
    url = server.serve("/ds.zip", zip_bytes(dataset_files()))
    with pytest.raises(DownloadError, match=r"sha256 mismatch .* expected 0{64}, got [0-9a-f]{64}; .*deleted"):
        download_dataset(settings, dest, url=url, sha256="0" * 64)
    assert_clean(dest, present=False)


def test_truncated_zip(server, settings, dest):
    data = zip_bytes(dataset_files())
    url = server.serve("/ds.zip", data[: len(data) // 2])
    with pytest.raises(DownloadError, match=r"not a readable zip or tar archive \(truncated or corrupt\?\)"):
        download_dataset(settings, dest, url=url)
    assert_clean(dest, present=False)


def _tar_info(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _tar_with(info: tarfile.TarInfo) -> bytes:
    return tar_bytes(dataset_files(), extra=[info])


def _zip_symlink() -> bytes:
    buffer = io.BytesIO(zip_bytes(dataset_files()))
    with zipfile.ZipFile(buffer, "a") as zf:
        info = zipfile.ZipInfo("image/evil.png")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("dotdot.zip", lambda tmp: zip_bytes({**dataset_files(), "../evil.txt": b"x"}), "path leaving its folder"),
        ("abs.zip", lambda tmp: zip_bytes({**dataset_files(), str(tmp / "evil.txt"): b"x"}), "absolute path"),
        ("link.zip", lambda tmp: _zip_symlink(), "link or device file"),
        ("dotdot.tar.gz", lambda tmp: tar_bytes({**dataset_files(), "../evil.txt": b"x"}), "path leaving its folder"),
        ("link.tar.gz", lambda tmp: _tar_with(_tar_info("image/x.png", tarfile.SYMTYPE, "/etc/passwd")), "link or"),
        ("hardlink.tar.gz", lambda tmp: _tar_with(_tar_info("image/x.png", tarfile.LNKTYPE, "image/0.png")), "link or"),
        ("dev.tar.gz", lambda tmp: _tar_with(_tar_info("image/null", tarfile.CHRTYPE)), "link or device file"),
    ],
)
def test_unsafe_archives_refused(settings, dest, tmp_path, name, make, message):
    archive = tmp_path / "src" / name
    archive.parent.mkdir()
    archive.write_bytes(make(tmp_path))
    with pytest.raises(DownloadError, match=message):
        download_dataset(settings, dest, archive=archive)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()
    assert archive.is_file()
    assert_clean(dest, present=False)


def test_nested_top_folders_normalised(settings, dest, tmp_path):
    files = {f"chest/v1/{k}": v for k, v in dataset_files().items()}
    files |= {"__MACOSX/chest/v1/image/._0.png": b"junk", "README.txt": b"hi"}
    archive = tmp_path / "nested.zip"
    archive.write_bytes(zip_bytes(files))
    assert_dataset(download_dataset(settings, dest, archive=archive), dest)


def test_local_archive_left_untouched(settings, dest, tmp_path):
    archive = tmp_path / "src" / "kaggle.zip"
    archive.parent.mkdir()
    data = zip_bytes(dataset_files())
    archive.write_bytes(data)
    before = archive.stat()
    result = download_dataset(settings, dest, archive=archive, sha256=hashlib.sha256(data).hexdigest().upper())
    assert_dataset(result, dest)
    assert result.source == str(archive)
    after = archive.stat()
    assert archive.read_bytes() == data and (after.st_mtime_ns, after.st_mode) == (before.st_mtime_ns, before.st_mode)


def test_tar_gz_download(server, settings, dest):
    url = server.serve("/chest.tar.gz", tar_bytes(dataset_files(), prefix="chest-segmentation-image/"))
    assert_dataset(download_dataset(settings, dest, url=url), dest)


def test_second_run_is_a_no_op(server, settings, dest, tmp_path):
    archive = tmp_path / "kaggle.zip"
    archive.write_bytes(zip_bytes(dataset_files()))
    download_dataset(settings, dest, archive=archive)
    again = download_dataset(settings, dest, url=server.url("/never.zip"))
    from_kaggle = download_dataset(settings, dest, env={}, kaggle_json=tmp_path / "none.json")  # no credentials needed
    for result in (again, from_kaggle):
        assert result.already_present and result.counts == FULL_COUNTS and result.dest == dest
    assert server.requests == []
    assert_clean(dest, present=True)


def test_force_replaces_but_keeps_old_copy_until_complete(settings, dest, tmp_path):
    old, new, broken = tmp_path / "old.zip", tmp_path / "new.zip", tmp_path / "broken.zip"
    old.write_bytes(zip_bytes(dataset_files()))
    new.write_bytes(zip_bytes(dataset_files(n_train=4), prefix="top/"))
    broken.write_bytes(old.read_bytes()[:200])
    download_dataset(settings, dest, archive=old)
    with pytest.raises(DownloadError, match="not a readable zip"):
        download_dataset(settings, dest, archive=broken, force=True)
    assert_clean(dest, present=True)
    assert len(list((dest / "image").iterdir())) == 3
    result = download_dataset(settings, dest, archive=new, force=True)
    assert_dataset(result, dest, {**FULL_COUNTS, "image": 4, "mask": 4})


@pytest.mark.parametrize("pack", [zip_bytes, tar_bytes])
@pytest.mark.parametrize(("limit", "value"), [("max_extract_bytes", 500), ("max_extract_files", 4)])
def test_extraction_limits(dest, tmp_path, pack, limit, value):
    archive = tmp_path / "bomb.bin"
    archive.write_bytes(pack(dataset_files()))
    settings = DownloadSettings(**{limit: value})
    with pytest.raises(DownloadError, match=f"the download.{limit} limit; raise CXRSEG_DOWNLOAD__{limit.upper()}"):
        download_dataset(settings, dest, archive=archive)
    assert_clean(dest, present=False)


def test_disk_full(server, settings, dest, monkeypatch):
    url = server.serve("/ds.zip", zip_bytes(dataset_files()))

    def full(self, src, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(extract._Budget, "copy", full)
    with pytest.raises(DownloadError, match=r"No space left on the disk holding .*; free some space or pick another"):
        download_dataset(settings, dest, url=url)
    assert_clean(dest, present=False)


def test_non_empty_destination_refused(settings, dest, tmp_path):
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("mine")
    archive = tmp_path / "kaggle.zip"
    archive.write_bytes(zip_bytes(dataset_files()))
    with pytest.raises(DownloadError, match="not empty and holds no image/ and mask/"):
        download_dataset(settings, dest, archive=archive, force=True)
    assert (dest / "notes.txt").read_text() == "mine"


def test_item1_force_keeps_unrelated_files(settings, dest, tmp_path):
    for folder in ("image", "mask", "src"):
        (dest / folder).mkdir(parents=True)
    (dest / "src" / "train.py").write_text("code")
    archive = tmp_path / "good.zip"
    archive.write_bytes(zip_bytes(dataset_files()))
    with pytest.raises(DownloadError, match="did not install .* move your files out or pick another --dest"):
        download_dataset(settings, dest, archive=archive, force=True)
    assert (dest / "src" / "train.py").read_text() == "code"
    (dest / "src" / "train.py").unlink()
    (dest / "src").rmdir()
    (dest / "image" / "a.png").write_bytes(b"x")  # exactly the dataset layout: replaceable without a marker
    assert_dataset(download_dataset(settings, dest, archive=archive, force=True), dest)
    assert_dataset(download_dataset(settings, dest, archive=archive, force=True), dest)  # installed: replaceable
    (dest / "notes.txt").write_text("mine")  # installed by cxrseg (marker), but this file is the user's: kept
    with pytest.raises(DownloadError, match=r"--force would delete .*notes.txt, which `cxrseg download` did not"):
        download_dataset(settings, dest, archive=archive, force=True)
    assert (dest / "notes.txt").read_text() == "mine"
    (dest / "notes.txt").unlink()
    assert_dataset(download_dataset(settings, dest, archive=archive, force=True), dest)
    assert_clean(dest, present=True)


def test_force_replaces_what_the_archive_installed_but_not_what_the_user_added(settings, dest, tmp_path):
    """With the marker present, --force deleted everything in DEST, the user's own files
    beside the dataset included. What the archive itself put there (a README) is recorded in the marker and
    replaced."""
    archive = tmp_path / "with-readme.zip"
    archive.write_bytes(zip_bytes(dataset_files() | {"README.txt": b"from the archive"}))
    download_dataset(settings, dest, archive=archive)
    assert json.loads((dest / destination.MARKER).read_text())["entries"] == [
        "README.txt", "image", "mask", "test_image", "test_mask"
    ]  # fmt: skip
    download_dataset(settings, dest, archive=archive, force=True)  # the archive's own README is no user file
    for name in ("notes.txt", "results"):
        (dest / name).mkdir() if name == "results" else (dest / name).write_text("mine")
    with pytest.raises(DownloadError, match=r"--force would delete .*notes.txt and 1 more, .* move them out of"):
        download_dataset(settings, dest, archive=archive, force=True)
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "results").is_dir()


def test_item8_stale_staging_and_partial_are_cleaned(settings, dest, tmp_path):
    stale = dest.parent / f".{dest.name}.tmp-abc123"
    (stale / "unpacked" / "image").mkdir(parents=True)
    (dest / destination.PARTIAL_DIR).mkdir(parents=True)
    (dest / destination.PARTIAL_DIR / "ds.zip").write_bytes(b"half")
    archive = tmp_path / "good.zip"
    archive.write_bytes(zip_bytes(dataset_files()))
    assert_dataset(download_dataset(settings, dest, archive=archive), dest)
    assert not stale.exists()
    archive.unlink()
    assert_clean(dest, present=True)


def test_item8_sigterm_stops_the_download_and_cleans_up(server, settings, dest, monkeypatch):
    import os
    import signal

    url = server.serve("/ds.zip", zip_bytes(dataset_files()))

    def progress(done: int, total: int | None) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(DownloadError, match="stopped by SIGTERM") as caught:
        download_dataset(settings, dest, url=url, on_progress=progress)
    assert caught.value.exit_code == 143
    assert_clean(dest, present=False)


def trickle(data: bytes, every: float, size: int = 1, announce: bool = True):
    """A route that sends `size` bytes every `every` seconds, with or without a Content-Length."""

    def route(handler: Handler) -> None:
        handler.send_response(200)
        if announce:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            for start in range(0, len(data), size):
                handler.wfile.write(data[start : start + size])
                handler.wfile.flush()
                time.sleep(every)
        except ConnectionError:  # the client gave up, as it should
            pass

    return route


def test_a_trickling_server_is_abandoned_below_the_minimum_speed(server, dest):
    server.routes["/slow.zip"] = trickle(zip_bytes(dataset_files()), every=0.2)  # 5 B/s, each read well in time
    settings = DownloadSettings(retries=1, timeout=5, min_speed=1000, speed_window=0.5)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"slower than 1000 bytes/s, the download.min_speed limit"):
        download_dataset(settings, dest, url=server.url("/slow.zip"))
    assert time.monotonic() - start < 3 and len(server.requests) == 2  # a retry, then no fresh retries for trickles
    assert_clean(dest, present=False)


def test_the_overall_deadline_ends_a_download_that_keeps_its_speed(server, dest):
    server.routes["/long.zip"] = trickle(zip_bytes(dataset_files()), every=0.05, size=200)  # 4 kB/s, for seconds
    settings = DownloadSettings(retries=3, timeout=5, min_speed=100, speed_window=0.2, deadline=0.6)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"not finished after 0.6 s, the download.deadline"):
        download_dataset(settings, dest, url=server.url("/long.zip"))
    assert time.monotonic() - start < 2
    assert_clean(dest, present=False)


def test_a_download_larger_than_the_cap_is_refused_announced_or_not(server, dest):
    data = zip_bytes(dataset_files())
    server.serve("/big.zip", data)
    server.routes["/unannounced.zip"] = trickle(data, every=0, size=500, announce=False)  # ends when closed
    settings = DownloadSettings(retries=0, timeout=5, max_download_bytes=2000)
    for path in ("/big.zip", "/unannounced.zip"):
        seen: list[int] = []
        with pytest.raises(DownloadError, match=r"more than 2000 bytes, the download.max_download_bytes limit"):
            download_dataset(
                settings, dest, url=server.url(path), on_progress=lambda done, total, log=seen: log.append(done)
            )
        assert (not seen) if path == "/big.zip" else (0 < max(seen) <= 2000)  # announced: before the body
        assert_clean(dest, present=False)


def test_extraction_stops_at_a_ratio_of_the_archive_size(dest, tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zip_bytes({**dataset_files(), "image/zeros.png": bytes(2_000_000)}))
    with pytest.raises(DownloadError, match=r"more than 50 times its own size .*download.max_extract_ratio"):
        download_dataset(DownloadSettings(), dest, archive=archive)
    assert_clean(dest, present=False)
    assert DownloadSettings().max_extract_bytes <= 8 * 1024**3


@pytest.mark.parametrize(
    ("body", "shown"),
    [(b"<!DOCTYPE html><html>Sign in</html>", "<!DOCTYPE html>"), (b"", "an empty file"), (b"\x00" * 600, r"\\x00")],
)
def test_a_file_that_is_no_archive_is_named_before_any_scan(dest, tmp_path, monkeypatch, body, shown):
    archive = tmp_path / "download.zip"
    archive.write_bytes(body)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("scanned as an archive")

    monkeypatch.setattr(zipfile, "is_zipfile", never)
    monkeypatch.setattr(tarfile, "open", never)
    with pytest.raises(DownloadError, match=rf"is not a zip or tar archive \(it starts with .*{shown}"):
        download_dataset(DownloadSettings(), dest, archive=archive)
    assert_clean(dest, present=False)


def plain_tar(files: dict[str, bytes]) -> tuple[bytes, list[int]]:
    """An uncompressed tar of `files` and the byte offset after each member."""
    buffer, ends = io.BytesIO(), []
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            ends.append(buffer.tell())
    return buffer.getvalue(), ends


def test_a_plain_tar_whose_last_member_is_a_zip_is_read_as_the_tar(settings, dest, tmp_path):
    """The format comes from the first bytes: zipfile.is_zipfile finds the end record of a zip stored as the tar's
    last member, and the inner zip was unpacked instead of the tar."""
    files = dataset_files()
    inner = zip_bytes({"image/x.png": files["image/0.png"], "mask/x.jpeg": files["mask/0.jpeg"]}, prefix="other/")
    archive = tmp_path / "lungs.tar"
    archive.write_bytes(plain_tar(files | {"extras/backup.zip": inner})[0])
    assert zipfile.is_zipfile(archive)  # the trap
    result = download_dataset(settings, dest, archive=archive)
    assert result.counts == FULL_COUNTS and (dest / "image" / "0.png").is_file()


def _flip_middle(data: bytes, count: int = 200) -> bytes:
    damaged = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + count):
        damaged[i] ^= 0x5A
    return bytes(damaged)


def _zip_headers_patched(files: dict[str, bytes], offsets: dict[bytes, int], value: bytes, *, ored: bool) -> bytes:
    """A zip whose local (PK\\x03\\x04) and central (PK\\x01\\x02) headers carry `value` at the given offset."""
    data = bytearray(zip_bytes(files))
    for signature, offset in offsets.items():
        start = 0
        while (at := data.find(signature, start)) >= 0:
            if ored:
                data[at + offset] |= value[0]
            else:
                data[at + offset : at + offset + len(value)] = value
            start = at + 4
    return bytes(data)


def _noisy_tar() -> bytes:
    """The dataset and 300 kB of noise: bzip2 at level 1 (100 kB blocks) compresses it in several blocks."""
    noise = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    return plain_tar(dataset_files() | {"extras/noise.bin": noise})[0]


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("lungs.tar.xz", lambda: _flip_middle(lzma.compress(plain_tar(dataset_files())[0])), r"is corrupt \("),
        ("lungs.tar.bz2", lambda: _flip_middle(bz2.compress(_noisy_tar(), compresslevel=1)), r"is corrupt \("),
        (
            "lungs.zip",  # general purpose bit 0: encrypted
            lambda: _zip_headers_patched(dataset_files(), {b"PK\x03\x04": 6, b"PK\x01\x02": 8}, b"\x01", ored=True),
            r"is encrypted \('image/0.png' needs a password\); .* re-pack it without a password",
        ),
        (
            "lungs.zip",  # compression method 9, deflate64
            lambda: _zip_headers_patched(
                dataset_files(), {b"PK\x03\x04": 8, b"PK\x01\x02": 10}, b"\x09\x00", ored=False
            ),
            r"compression Python cannot read \(method 9 for 'image/0.png'\); .* re-pack it as a plain zip or tar.gz",
        ),
    ],
    ids=["corrupt-xz", "corrupt-bz2", "encrypted-zip", "deflate64-zip"],
)
def test_unreadable_archives_give_one_line_saying_what_to_do(settings, dest, tmp_path, name, make, message):
    """A corrupt .tar.xz (lzma.LZMAError), an encrypted zip (RuntimeError) and a deflate64
    zip (NotImplementedError) ended in a traceback, and a .tar.bz2 corrupt past its first block (an OSError without
    an errno) was reported as "check the path and permissions"."""
    archive = tmp_path / name
    archive.write_bytes(make())
    with pytest.raises(DownloadError, match=message) as caught:
        download_dataset(settings, dest, archive=archive)
    assert "\n" not in str(caught.value) and "permissions" not in str(caught.value)
    if "corrupt" in message:
        assert str(caught.value).endswith("fetch it again.")
    assert archive.is_file()
    assert_clean(dest, present=False)


def test_a_bit_flip_in_a_tar_gz_is_caught_by_its_crc(settings, dest, tmp_path):
    """The gzip stream was never read to its end, so its CRC was never checked; in stored
    blocks a flipped byte changes an image without any other sign. Also: gzip's CRC error is an OSError, and it
    was reported as "check the path and permissions"."""
    damaged = bytearray(gzip.compress(plain_tar(dataset_files())[0], compresslevel=0))
    damaged[2000] ^= 0xFF  # inside the first image's bytes
    archive = tmp_path / "lungs.tar.gz"
    archive.write_bytes(bytes(damaged))
    with pytest.raises(DownloadError, match=r"lungs.tar.gz is corrupt \(CRC check failed.*\); fetch it again.$"):
        download_dataset(settings, dest, archive=archive)
    assert_clean(dest, present=False)


@pytest.mark.parametrize("at", ["between-members", "inside-a-header"])
def test_a_tar_cut_short_is_refused_not_installed_short(settings, dest, tmp_path, at):
    """`tarfile` stops silently at a missing or cut header past the first member, so a tar
    cut after image/ and mask/ installed a dataset without test_image/ and test_mask/."""
    raw, ends = plain_tar(dataset_files())
    archive = tmp_path / "lungs.tar"
    archive.write_bytes(raw[: ends[5] + (0 if at == "between-members" else 100)])  # after image/ and mask/
    with pytest.raises(
        DownloadError, match=r"is truncated or corrupt \(no end-of-archive marker after 'mask/2.jpeg'\)"
    ):
        download_dataset(settings, dest, archive=archive)
    assert_clean(dest, present=False)


def test_a_tar_with_a_garbled_header_is_refused(settings, dest, tmp_path):
    """A header that fails its checksum past the first member ended the archive
    silently."""
    raw, ends = plain_tar(dataset_files())
    damaged = bytearray(raw)
    damaged[ends[5] + 10] ^= 0xFF  # the name in the header after mask/2.jpeg
    archive = tmp_path / "lungs.tar"
    archive.write_bytes(bytes(damaged))
    with pytest.raises(DownloadError, match=r"truncated or corrupt \(no end-of-archive marker after 'mask/2.jpeg'\)"):
        download_dataset(settings, dest, archive=archive)
    assert_clean(dest, present=False)


@pytest.mark.parametrize("pack", ["tar", "tar.gz"])
def test_a_download_without_content_length_cut_short_is_refused(server, settings, dest, pack):
    """Over HTTP: without a Content-Length the body ends when the server closes, so a cut
    tar (here after image/ and mask/) looked complete and installed without test_image/ and test_mask/. A cut .tar.gz
    was already refused (gzip raises EOFError); it stays here so that both keep one line saying to fetch again."""
    raw, ends = plain_tar(dataset_files())
    body = raw[: ends[5]] if pack == "tar" else gzip.compress(raw)[: -len(raw) // 4]
    server.routes[f"/ds.{pack}"] = trickle(body, every=0, size=len(body), announce=False)
    with pytest.raises(DownloadError, match=r"(truncated or corrupt|is corrupt) \(.*\); fetch it again.$"):
        download_dataset(settings, dest, url=server.url(f"/ds.{pack}"))
    assert_clean(dest, present=False)


def _with_folders(pack: str, count: int) -> bytes:
    """The dataset and `count` empty folder entries, as a zip or a tar.gz."""
    folders = [f"junk/d{i}/" for i in range(count)]
    if pack == "zip":
        buffer = io.BytesIO(zip_bytes(dataset_files()))
        with zipfile.ZipFile(buffer, "a") as zf:
            for name in folders:
                zf.writestr(zipfile.ZipInfo(name), b"")
        return buffer.getvalue()
    return tar_bytes(dataset_files(), extra=[_tar_info(name, tarfile.DIRTYPE) for name in folders])


@pytest.mark.parametrize("pack", ["zip", "tar.gz"])
def test_folders_count_against_the_file_limit(dest, tmp_path, pack):
    """Folder entries were not counted against download.max_extract_files, so an archive
    of a million empty folders was unpacked in full."""
    archive = tmp_path / f"folders.{pack}"
    archive.write_bytes(_with_folders(pack, 200))
    settings = DownloadSettings(max_extract_files=50)  # the dataset alone holds 10 files
    with pytest.raises(DownloadError, match=r"more than 50 files and folders, the download.max_extract_files limit"):
        download_dataset(settings, dest, archive=archive)
    assert_clean(dest, present=False)


def _raw_zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip holding `entries` in order, the same name twice if asked."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of a duplicate name, and writes it
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "extra", "shown"),
    [
        ("same.zip", "image/0.png", r"holds 'image/0.png' twice;"),
        ("normalised.tar", "image/./0.png", r"holds 'image/./0.png' twice \(also as 'image/0.png'\)"),
        ("case.zip", "IMAGE/0.PNG", r"holds 'IMAGE/0.PNG' twice \(also as 'image/0.png'\)"),
    ],
)
def test_an_entry_written_twice_is_refused_naming_it(settings, dest, tmp_path, name, extra, shown):
    """The same path twice (as written, after normalising, or after case-folding, as a
    macOS or Windows disk compares names) was unpacked "last wins", silently replacing an image."""
    entries = [*dataset_files().items(), (extra, b"not the image")]
    archive = tmp_path / name
    archive.write_bytes(_raw_zip(entries) if name.endswith(".zip") else plain_tar(dict(entries))[0])
    with pytest.raises(DownloadError, match=shown + r".* re-pack the archive with each file once"):
        download_dataset(settings, dest, archive=archive)
    assert_clean(dest, present=False)


def test_a_file_where_a_folder_goes_is_refused_naming_both_entries(settings, dest, tmp_path):
    """A file and a folder at one path failed with the staging path, deleted by the time
    the user read it, and "check the path and permissions"."""
    archive = tmp_path / "clash.tar"
    archive.write_bytes(plain_tar(dataset_files() | {"image/0.png/inner.png": b"x"})[0])
    with pytest.raises(DownloadError, match=r"a file and a folder at one path \('image/0.png' and 'image/0.png/inner"):
        download_dataset(settings, dest, archive=archive)
    assert_clean(dest, present=False)


@pytest.mark.parametrize("pack", ["zip", "tar"])
def test_a_member_name_too_long_is_named_not_the_staging_path(settings, dest, tmp_path, pack):
    """A member name longer than the file system allows failed naming the staging
    folder, deleted by the time the user read it, with "check the path and permissions"."""
    long_name = "image/" + "a" * 300 + ".png"
    files = dataset_files() | {long_name: b"x"}
    archive = tmp_path / f"long.{pack}"
    archive.write_bytes(zip_bytes(files) if pack == "zip" else plain_tar(files)[0])
    with pytest.raises(DownloadError, match=rf"a name too long for this file system \('{long_name}'\); .*re-pack") as e:
        download_dataset(settings, dest, archive=archive)
    assert ".tmp-" not in str(e.value)
    assert_clean(dest, present=False)


def test_an_unusable_dataset_is_described_with_paths_inside_the_archive(settings, dest, tmp_path):
    """The dataset check named files in the staging folder, deleted by the time the user
    read the message."""
    files = dict(dataset_files())
    del files["mask/2.jpeg"]
    archive = tmp_path / "unpaired.zip"
    archive.write_bytes(zip_bytes(files))
    with pytest.raises(DownloadError, match=r"unpaired.zip unpacked, but the dataset in it is unusable: ") as caught:
        download_dataset(settings, dest, archive=archive)
    assert "without a mask in mask: image/2.png." in str(caught.value) and ".tmp-" not in str(caught.value)
    assert_clean(dest, present=False)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_sha256_is_refused_not_skipped(settings, dest, tmp_path, value):
    """`--sha256 ''` (say, from an unset shell variable) silently turned the check off."""
    archive = tmp_path / "lungs.zip"
    archive.write_bytes(zip_bytes(dataset_files()))
    with pytest.raises(DownloadError, match=r"--sha256 is empty; give the archive's 64 hex digits, or leave --sha256"):
        download_dataset(settings, dest, archive=archive, sha256=value)
    assert_clean(dest, present=False)


@pytest.mark.parametrize("where", ["dest", "partial", "staging"])
def test_an_archive_inside_dest_is_refused_before_anything_is_deleted(settings, dest, tmp_path, where):
    """`download --archive D/new.zip --dest D --force` deleted the archive with the old
    dataset, and an archive in D/.partial or in a staging folder beside D was deleted as a leftover of a killed
    run."""
    first = tmp_path / "first.zip"
    first.write_bytes(zip_bytes(dataset_files()))
    if where == "dest":
        download_dataset(settings, dest, archive=first)
    folder = {"dest": dest, "partial": dest / destination.PARTIAL_DIR, "staging": dest.parent / f".{dest.name}.tmp-x"}
    archive = folder[where] / "lungs-v2.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(zip_bytes(dataset_files(n_train=4)))
    with pytest.raises(DownloadError, match=r"Archive .*lungs-v2.zip is inside .*; move the archive out of"):
        download_dataset(settings, dest, archive=archive, force=True)
    assert archive.is_file()
    if where == "dest":
        assert count_files(dest / "image") == 3  # the old dataset is untouched too


def count_files(folder: Path) -> int:
    return sum(1 for _ in folder.iterdir())


def test_a_second_download_to_the_same_dest_stops_at_once(server, settings, dest, tmp_path):
    """A second download to DEST, started while the first was running, deleted the
    first one's DEST/.partial (and staging folders) as leftovers of a killed run, and then both installed."""
    url = server.serve("/ds.zip", zip_bytes(dataset_files()))
    other = tmp_path / "other.zip"
    other.write_bytes(zip_bytes(dataset_files(n_train=4)))
    second: list[str] = []

    def start_another(done: int, total: int | None) -> None:
        if not second:  # while the first download is writing DEST/.partial
            with pytest.raises(DownloadError) as caught:
                download_dataset(settings, dest, archive=other)
            second.append(str(caught.value))

    assert_dataset(download_dataset(settings, dest, url=url, on_progress=start_another), dest)
    assert re.fullmatch(rf"{re.escape(str(dest))} is in use by another `cxrseg download` \(it holds .*\.lungs\.lock\)"
                        r"; wait for it to end, then run again\.", second[0])  # fmt: skip
    assert other.is_file()
    assert_clean(dest, present=True)  # the lock file went with the first download
