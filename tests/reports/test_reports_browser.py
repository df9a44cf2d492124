"""Render report/index.html in headless Chromium (``-m browser``).

Skipped when Chromium is absent, unless UKD_REQUIRE_BROWSER is set (CI): then it fails.
Install Chromium with scripts/install_chromium.sh.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from reports import ReportResult, build_report
from tests.reports.browser_support import (
    CHROMIUM_FLAGS,
    chromium_or_skip,
    find_chromium,
    image_check_results,
    with_image_check,
)
from tests.reports.report_builders import Store

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip(find_chromium())


@pytest.fixture(scope="module")
def report(store: Store, tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    return build_report(str(store.root), out_dir=tmp_path_factory.mktemp("browser-report"))


def _run(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_dump_dom_has_tables_and_images(
    chromium: str, report: ReportResult, tmp_path: Path
) -> None:
    done = _run(chromium, tmp_path, "--dump-dom", report.index_html.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert dom.count("<table") == 4, dom[:2000]
    assert 'class="ukd comparison"' in dom and 'class="ukd trials"' in dom
    assert "<strong>62.0 ± 2.0</strong>" in dom
    # ablation, 2 comparison charts, 2 learning curves, parallel coordinates
    assert dom.count('<img src="data:image/png;base64,') == 6
    assert "&lt;script&gt;" in dom  # the spec's text stayed text


def test_every_image_loads(chromium: str, report: ReportResult, tmp_path: Path) -> None:
    page = report.index_html.read_text(encoding="utf-8")
    checked = tmp_path / "index-check.html"  # a copy: the report itself has no script
    checked.write_text(with_image_check(page), encoding="utf-8")
    done = _run(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    images = image_check_results(done.stdout)
    assert len(images) == page.count("<img ") == 6
    for image in images:
        assert image["complete"] is True, image
        width, height = image["naturalWidth"], image["naturalHeight"]
        assert isinstance(width, int) and width > 0, image
        assert isinstance(height, int) and height > 0, image


def test_screenshot_is_a_png(chromium: str, report: ReportResult, tmp_path: Path) -> None:
    shot = tmp_path / "index.png"
    done = _run(
        chromium,
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1400,2400",
        report.index_html.as_uri(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 2400)
    assert len(data) > 20_000  # a blank page compresses to a few kB
    keep = os.environ.get("UKD_SCREENSHOT_DIR")
    if keep:
        shutil.copyfile(shot, Path(keep) / "index.png")
