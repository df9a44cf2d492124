"""The browser test is skipped without Chromium, but fails when UKD_REQUIRE_BROWSER is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reports.browser_support import chromium_or_skip, find_chromium


def test_chromium_is_found_where_ukd_chromium_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    monkeypatch.setenv("UKD_CHROMIUM", str(fake))
    assert find_chromium() != str(fake)  # not executable: not a browser
    fake.chmod(0o755)
    assert find_chromium() == str(fake)
    assert chromium_or_skip(find_chromium()) == str(fake)


def test_absent_chromium_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UKD_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"install_chromium\.sh"):
        chromium_or_skip(None)
    monkeypatch.setenv("UKD_REQUIRE_BROWSER", "0")
    with pytest.raises(pytest.skip.Exception):
        chromium_or_skip(None)


def test_absent_chromium_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UKD_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="UKD_REQUIRE_BROWSER is set"):
        chromium_or_skip(None)
