"""Pictures of the report: each one a PNG and an SVG file (written atomically) plus the PNG
bytes that ``index.html`` embeds as a data URI, so the page needs no other file."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from common.atomic import write_bytes

DPI = 110
_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Picture:
    """One written picture."""

    stem: str
    """File stem inside the report directory (``<stem>.png``, ``<stem>.svg``)."""
    title: str
    caption: str
    """What the picture shows (error bars, bands, lines), shown under it in index.html."""
    png: Path
    svg: Path
    png_bytes: bytes

    @property
    def paths(self) -> list[Path]:
        return [self.png, self.svg]

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png_bytes).decode("ascii")


def slug(text: str) -> str:
    """A file-name-safe form of ``text``: runs of other characters than ``[A-Za-z0-9._-]``
    become ``_`` (never empty)."""
    return _SLUG_RE.sub("_", text).strip("_") or "_"


def unique_stems(stems: Iterable[str]) -> list[str]:
    """The stems in order, a repeated one suffixed ``_2``, ``_3``, ..."""
    seen: set[str] = set()
    out: list[str] = []
    for stem in stems:
        candidate, index = stem, 1
        while candidate in seen:
            index += 1
            candidate = f"{stem}_{index}"
        seen.add(candidate)
        out.append(candidate)
    return out


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG (SVG text kept as text, no date: the same input gives the
    same bytes)."""
    buffer = io.BytesIO()
    if fmt == "svg":
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ukd-report"}):
            figure.savefig(buffer, format="svg", dpi=DPI, metadata={"Date": None})
    else:
        figure.savefig(buffer, format=fmt, dpi=DPI)
    return buffer.getvalue()


def save_picture(figure: Figure, out_dir: Path, stem: str, title: str, caption: str) -> Picture:
    """Write ``<out_dir>/<stem>.png`` and ``.svg`` atomically."""
    png = figure_bytes(figure, "png")
    # The PNG's draw laid the figure out; the SVG reuses that layout instead of solving again.
    figure.set_layout_engine("none")
    svg = figure_bytes(figure, "svg")
    return Picture(
        stem=stem,
        title=title,
        caption=caption,
        png=write_bytes(out_dir / f"{stem}.png", png),
        svg=write_bytes(out_dir / f"{stem}.svg", svg),
        png_bytes=png,
    )


def series_colors(count: int) -> list[tuple[float, float, float, float]]:
    """``count`` distinguishable colours: tab10, tab20, then evenly spaced viridis."""
    cmap: Colormap
    if count <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(count)]
    if count <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(count)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(1, count - 1)) for i in range(count)]
