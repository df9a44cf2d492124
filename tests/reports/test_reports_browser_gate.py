"""The browser test is skipped without Chromium, but fails when UKD_REQUIRE_BROWSER is set."""

from __future__ import annotations

import pytest
from browser_support import chromium_or_skip


def test_found_chromium_is_used() -> None:
    assert chromium_or_skip("/usr/bin/chromium") == "/usr/bin/chromium"


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
