"""Finding headless Chromium for the browser tests, and what to do when it is absent."""

from __future__ import annotations

import html
import json
import os
import re
import shutil

import pytest

INSTALL_HINT = "install it with scripts/install_chromium.sh"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


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


# --------------------------------------------------------------------------- image check

IMAGE_CHECK_ID = "ukd-image-check"
_IMAGE_CHECK_SCRIPT = f"""<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images).map((img) => ({{
    alt: img.alt, complete: img.complete,
    naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
  }}));
  const out = document.createElement("pre");
  out.id = "{IMAGE_CHECK_ID}";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
}});
</script>
"""
_IMAGE_CHECK_RE = re.compile(rf'<pre id="{IMAGE_CHECK_ID}">(.*?)</pre>', re.S)


def with_image_check(page: str) -> str:
    """``page`` plus a script that, once the page has loaded, lists every ``<img>`` with its
    ``naturalWidth`` / ``naturalHeight`` in a ``<pre id="ukd-image-check">`` (the report
    itself has no script: the check runs on a copy)."""
    head, sep, tail = page.rpartition("</body>")
    assert sep, "the page has no </body>"
    return head + _IMAGE_CHECK_SCRIPT + sep + tail


def image_check_results(dom: str) -> list[dict[str, object]]:
    """What the script of :func:`with_image_check` found, from Chromium's ``--dump-dom``."""
    match = _IMAGE_CHECK_RE.search(dom)
    assert match is not None, "the image check did not run: " + dom[-2000:]
    results = json.loads(html.unescape(match.group(1)))
    assert isinstance(results, list)
    return results
