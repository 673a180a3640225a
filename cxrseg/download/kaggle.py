"""Kaggle API access: the credentials and what to tell the user about its HTTP answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cxrseg.errors import DownloadError


def kaggle_credentials(env: Mapping[str, str], kaggle_json: Path | None = None) -> tuple[str, str]:
    """(username, key) from KAGGLE_USERNAME/KAGGLE_KEY, else from kaggle.json."""
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
    if kaggle_json is None:
        config_dir = env.get("KAGGLE_CONFIG_DIR")
        kaggle_json = Path(config_dir) / "kaggle.json" if config_dir else Path.home() / ".kaggle" / "kaggle.json"
    token_hint = "create one at https://www.kaggle.com/settings (API > Create New Token)"
    if not kaggle_json.is_file():
        raise DownloadError(
            f"No Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY or save kaggle.json to {kaggle_json} "
            f"({token_hint}), or pass --url or --archive."
        )
    try:
        values = json.loads(kaggle_json.read_text())
        return str(values["username"]), str(values["key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{kaggle_json} is not a valid kaggle.json ({exc!r}); {token_hint}.") from exc


def http_message(code: int, url: str, kaggle_dataset: str | None) -> str:
    """A one-line message for an HTTP error answer that says what to do."""
    if kaggle_dataset:
        page = f"https://www.kaggle.com/datasets/{kaggle_dataset}"
        if code in (401, 403):
            return (
                f"Kaggle refused the download (HTTP {code}): check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json, "
                f"and accept the dataset's terms on {page}."
            )
        if code == 404:
            return f"Kaggle dataset {kaggle_dataset} not found (HTTP 404); check download.kaggle_dataset ({page})."
    elif code in (401, 403):
        return f"{url} refused access (HTTP {code}); use a public link, or fetch the file yourself and pass --archive."
    elif code == 404:
        return f"{url} not found (HTTP 404); check the --url."
    return f"{url} answered HTTP {code}; check the address or try again later."
