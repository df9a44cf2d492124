"""Finding headless Chromium for the browser tests, and what to do when it is absent."""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = "install it with scripts/install_chromium.sh"


def require_browser() -> bool:
    """UKD_REQUIRE_BROWSER set (CI): a missing Chromium is a failure, not a skip."""
    value = os.environ.get("UKD_REQUIRE_BROWSER", "").strip().lower()
    return value not in ("", "0", "false", "no")


def find_chromium() -> str | None:
    candidates = [os.environ.get("UKD_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium_or_skip(path: str | None) -> str:
    """``path`` if Chromium was found; else skip, or fail when UKD_REQUIRE_BROWSER is set."""
    if path is not None:
        return path
    message = f"chromium not found (/usr/bin/chromium missing); {INSTALL_HINT}"
    if require_browser():
        pytest.fail(f"UKD_REQUIRE_BROWSER is set but {message}", pytrace=False)
    pytest.skip(f"{message} (set UKD_REQUIRE_BROWSER=1 to make this a failure)")
