"""HTML review reports: page content from synthetic rows, error-map colours, and the page in a real browser."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg.inference.evaluate import ImageScore
from cxrseg.inference.render import overlay, save_png
from cxrseg.metrics import score, summarize
from cxrseg.report import ErrorMaps, error_map, write_evaluate_report, write_predict_report
from cxrseg.report.images import FN_COLOUR, FP_COLOUR, THUMB_SIDE
from cxrseg.report.predict import COLUMNS as PREDICT_COLUMNS
from cxrseg.report.svg import histogram
from tests.conftest import ellipse_pair

FLAGGED = {1: "no_lung;inverted", 2: "lr_imbalance", 4: "lr_imbalance"}  # row index -> flags


def predict_rows(out: Path, n: int = 6) -> list[dict]:
    """n rows as predict writes them, with real overlay and mask files (400x300), plus one error row."""
    rows = []
    for i in range(n):
        gray, mask = ellipse_pair(i, 300, 400)
        name = f"sub/case <{i}>.png" if i == 3 else f"case_{i}.png"  # markup and a subfolder in a name
        save_png(overlay(gray, mask), out / (name + ".overlay.png"))
        save_png(Image.fromarray(mask.astype(np.uint8) * 255), out / (name + ".mask.png"))
        rows.append(
            {
                "input": f"/data/{name}",
                "status": "ok",
                "message": "",
                "mask": name + ".mask.png",
                "overlay": name + ".overlay.png",
                "lung_px": int(mask.sum()) + i,
                "lung_fraction": 0.2 + i / 100,
                "right_lung_px": 1000 + i,
                "left_lung_px": 900,
                "border_confidence": 0.8,
                "mean_probability": 0.9,
                "lung_mm2": None,
                "flags": FLAGGED.get(i, ""),
            }
        )
    rows.append({"input": "/data/broken.png", "status": "error", "message": "/data/broken.png: truncated file."})
    return rows


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert match, element_id
    return match.group(1)


def test_predict_report_counts_cards_and_thumbnails(tmp_path):
    rows = predict_rows(tmp_path)
    path = write_predict_report(tmp_path, rows)
    html = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    assert [text_of(html, f"count-{k}") for k in ("total", "ok", "error", "flagged")] == ["7", "6", "1", "3"]
    assert [text_of(html, f"count-{k}") for k in ("no_lung", "lr_imbalance", "inverted", "not_two_lungs")] == [
        "1", "2", "1", "0"]  # fmt: skip
    assert html.count('<figure class="card') == 7
    assert html.count("<td") == 7 * (len(PREDICT_COLUMNS) + 1) + 2  # a cell per column (+ #) and the error table
    assert html.count('loading="lazy"') == 6  # every ok row has a thumbnail, the error row none
    assert "/data/broken.png: truncated file." in html
    assert "case &lt;3&gt;.png" in html and "case <3>" not in html  # names are escaped
    assert 'href="sub/case%20%3C3%3E.png.overlay.png"' in html  # links are percent-encoded, relative
    thumb = tmp_path / "report_files" / "thumbs" / "sub" / "case <3>.png.overlay.png.jpg"
    with Image.open(thumb) as picture:
        assert picture.format == "JPEG" and max(picture.size) == THUMB_SIDE
        assert f'width="{picture.size[0]}" height="{picture.size[1]}"' in html


def test_predict_report_is_self_contained(tmp_path):
    html = write_predict_report(tmp_path, predict_rows(tmp_path)).read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    assert "<link" not in html and "data:image" not in html  # CSS inline, pictures beside the page
    assert len(html) < 60_000


def test_thumbnails_are_reused_and_a_missing_overlay_is_survived(tmp_path):
    rows = predict_rows(tmp_path, n=2)
    write_predict_report(tmp_path, rows)
    thumb = tmp_path / "report_files" / "thumbs" / "case_0.png.overlay.png.jpg"
    before = thumb.stat().st_mtime_ns
    (tmp_path / "case_1.png.overlay.png").unlink()
    html = write_predict_report(tmp_path, rows).read_text(encoding="utf-8")
    assert thumb.stat().st_mtime_ns == before
    assert html.count('loading="lazy"') == 1 and "no picture" in html


def test_error_map_colours_each_kind_of_pixel():
    gray = np.full((40, 40), 100, dtype=np.uint8)
    truth, pred = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    truth[5:20, 5:20] = pred[5:20, 5:20] = True  # true positive
    pred[25:35, 5:15] = True  # false positive
    truth[25:35, 25:35] = True  # false negative
    rgb = np.asarray(error_map(gray, truth, pred)).astype(int)
    tp, fp, fn, bg = rgb[10, 10], rgb[30, 10], rgb[30, 30], rgb[2, 2]
    assert list(bg) == [100, 100, 100]
    assert tp.min() > 100 and tp.max() - tp.min() == 0  # a neutral veil
    assert np.abs(fp - FP_COLOUR).max() < 60 and np.abs(fn - FN_COLOUR).max() < 60
    assert np.abs(fp - fn).sum() > 150  # the two errors differ clearly
    with pytest.raises(ValueError, match="differ in shape"):
        error_map(gray, truth[:30], pred)


def test_error_map_shrinks_large_images():
    gray, mask = ellipse_pair(0, 2048, 1024)
    assert error_map(gray, mask, mask).size == (512, 1024)


def evaluate_records(tmp_path: Path, n: int = 5) -> tuple[Path, ErrorMaps]:
    report = tmp_path / "eval" / "report.html"
    maps = ErrorMaps(report)
    for i in range(n):
        gray, truth = ellipse_pair(10 + i, 96, 96)
        pred = np.roll(truth, 3 * i, axis=1)  # worse with i
        image = tmp_path / f"img_{i}.png"
        Image.fromarray(gray).save(image)
        maps(ImageScore(f"img_{i}", image, score(pred, truth)), truth, pred, gray=gray if i else None)  # 0: from file
    return report, maps


def test_evaluate_report_sorts_worst_first_with_maps_and_metrics(tmp_path):
    report, maps = evaluate_records(tmp_path)
    summary = summarize([r.scores for r in maps.records])
    html = write_evaluate_report(report, maps.records, summary, "validation").read_text(encoding="utf-8")
    order = re.findall(r'<span class="name" title="[^"]*">(img_\d)</span>', html)
    dice = {r.name: r.scores.dice for r in maps.records}
    assert order == sorted(dice, key=dice.get) and order[0] == "img_4"
    assert f"{summary['dice']['mean']:.4f}" in html and f"{summary['hd95']['median']:.2f}" in html
    assert html.count('src="report_files/thumbs/') == 5
    assert (report.parent / "report_files" / "maps" / "img_0.error.png").is_file()
    bars = [int(c) for c in re.findall(r'data-count="(\d+)"', html)]
    assert len(bars) == 20 and sum(bars) == 5
    assert "false positive" in html and "false negative" in html


def test_error_maps_keep_images_with_one_name_apart(tmp_path):
    maps = ErrorMaps(tmp_path / "r.html")
    gray, truth = ellipse_pair(1)
    for _ in range(2):
        maps(ImageScore("a b", tmp_path / "a.png", score(truth, truth)), truth, truth, gray=gray)
    assert [r.thumb.name for r in maps.records] == ["a_b.jpg", "a_b-2.jpg"]
    assert maps.records[0].thumb.parent == tmp_path / "r_files" / "thumbs"


def test_histogram_counts_every_defined_value():
    svg = histogram([0.91, 0.95, 0.951, 0.99, 1.0, math.nan], "Dice", bins=10)
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', svg)]
    assert sum(counts) == 5 and counts[-1] == 2  # 0.99 and 1.0 share the last bin
    assert 'aria-label="Dice histogram of 5 images"' in svg


# --- in a real browser: Playwright driving the system's headless Chromium ---------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium; skipped where none is installed, except in CI (CI=true), where that fails."""
    import os

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install '.[test]')"
    else:
        missing = None if CHROMIUM.exists() else f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, path: Path, javascript: bool = True):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=javascript)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda r: None if r.url.startswith("file://") else problems.append(f"network: {r.url}"))
    page.goto(path.as_uri())
    return page, problems


def visible_cards(page) -> list[str]:
    # textContent, not innerText: cards off screen are not rendered (content-visibility: auto)
    return page.locator("#gallery figure.card:visible .name").evaluate_all("names => names.map(n => n.textContent)")


def not_blank(png: bytes) -> float:
    import io

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


@pytest.mark.slow
def test_predict_report_in_browser_counts_filters_sorts_and_opens(browser, tmp_path):
    page, problems = open_page(browser, write_predict_report(tmp_path, predict_rows(tmp_path)))
    assert page.inner_text("#count-flagged") == "3" and page.inner_text("#count-error") == "1"
    assert len(visible_cards(page)) == 7
    page.select_option("#filter", "flag:lr_imbalance")
    assert visible_cards(page) == ["case_2.png", "case_4.png"] and page.inner_text("#shown") == "2"
    assert page.locator("#rows tbody tr:visible").count() == 2
    page.click('a[data-filter="status:error"]')  # the summary counts filter too
    assert visible_cards(page) == ["broken.png"]
    page.select_option("#filter", "all")
    page.click('th[data-key="lung_px"] button')
    page.click('th[data-key="lung_px"] button')  # second click: descending
    values = [float(v) for v in page.locator('#rows tbody tr td:nth-child(4)').evaluate_all(
        "cells => cells.map(c => c.dataset.v).filter(v => v !== '')")]  # fmt: skip
    assert values == sorted(values, reverse=True) and len(values) == 6
    assert page.get_attribute('th[data-key="lung_px"]', "aria-sort") == "descending"
    first = visible_cards(page)[0]
    page.locator("#gallery figure.card a.full").first.click()
    assert page.locator("#viewer").is_visible()
    page.wait_for_function("document.querySelector('#viewer img').naturalWidth > 0")
    assert page.inner_text("#viewer figcaption").endswith(first)
    assert page.evaluate("document.querySelector('#viewer img').naturalWidth") == 400  # the full-size overlay
    page.click("#viewer button.close")
    assert not page.locator("#viewer").is_visible()
    assert not_blank(page.screenshot()) > 20
    assert problems == []


@pytest.mark.slow
def test_evaluate_report_in_browser_sorts_by_dice_and_opens_a_map(browser, tmp_path):
    report, maps = evaluate_records(tmp_path)
    write_evaluate_report(report, maps.records, summarize([r.scores for r in maps.records]))
    page, problems = open_page(browser, report)
    dice = {r.name: r.scores.dice for r in maps.records}
    assert visible_cards(page) == sorted(dice, key=dice.get)  # worst first
    assert page.locator("svg.histogram rect.bar").count() == 20
    page.click('th[data-key="dice"] button')  # already ascending: now descending
    assert visible_cards(page) == sorted(dice, key=dice.get, reverse=True)
    page.select_option("#sort", "dice:asc")
    assert visible_cards(page) == sorted(dice, key=dice.get)
    page.locator("#gallery a.full").first.click()
    page.wait_for_function("document.querySelector('#viewer img').naturalWidth > 0")
    assert page.evaluate("document.querySelector('#viewer img').getAttribute('src')").endswith("maps/img_4.error.png")
    assert not_blank(page.screenshot(full_page=True)) > 20
    assert problems == []


@pytest.mark.slow
def test_reports_show_table_and_gallery_without_javascript(browser, tmp_path):
    page, _ = open_page(browser, write_predict_report(tmp_path, predict_rows(tmp_path)), javascript=False)
    assert len(visible_cards(page)) == 7 and page.locator("#rows tbody tr:visible").count() == 7
    assert page.locator("#gallery img:visible").count() == 6
    assert not page.locator("#controls").is_visible()  # controls that need the script stay hidden
    link = page.locator("#gallery a.full").first.get_attribute("href")
    assert (tmp_path / link).is_file()  # without the script a card is a plain link to the overlay
    assert not_blank(page.screenshot()) > 20


def test_predict_report_with_a_name_that_is_not_utf8_links_to_the_file(tmp_path):
    """A file name that is not valid UTF-8 (os.listdir keeps its bytes as surrogates) crashed
    write_predict_report with UnicodeEncodeError, in url() and in writing the page; the page is now written, the
    name shown as \\xNN and the link percent-encodes the name's bytes, so it opens the very file."""
    import os
    from urllib.parse import unquote_to_bytes

    name = os.fsdecode(b"case\xff.png")
    Image.new("RGB", (32, 32)).save(tmp_path / (name + ".overlay.jpg"), format="JPEG")
    row = {"input": "/data/" + name, "status": "ok", "message": "", "mask": name + ".mask.png",
           "overlay": name + ".overlay.jpg", "flags": ""}  # fmt: skip
    html = write_predict_report(tmp_path, [row]).read_text(encoding="utf-8")
    assert "case\\xff.png" in html
    links = re.findall(r'href="([^"]*case[^"]*)"', html)
    assert links and all((tmp_path / os.fsdecode(unquote_to_bytes(link))).is_file() for link in links)


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_predict_report_reads_and_writes_only_inside_its_folder(tmp_path, where):
    """A row whose overlay names a picture outside the output folder (a hand-edited table kept by
    --skip-existing) made the report read it and write its thumbnail beside it, outside --out; such a row now
    gets no thumbnail and no link."""
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(secret)
    before = sorted(p for p in tmp_path.rglob("*"))
    picture = str(secret) if where == "absolute" else "../../secret.png"
    row = {"input": "/data/a.png", "status": "ok", "message": "", "mask": "a.png.mask.png", "overlay": picture,
           "flags": ""}  # fmt: skip
    html = write_predict_report(out, [row]).read_text(encoding="utf-8")
    made = [p for p in tmp_path.rglob("*") if p not in before]
    assert made and all(p.is_relative_to(out) for p in made)
    assert "secret" not in "".join(re.findall(r'(?:href|src)="([^"]*)"', html))
