"""``report/index.html``: one self-contained page (tables, base64 plots, the sweep's spec)."""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import pandas as pd

from reports.ablation import Ablation, AblationFiles
from reports.pictures import Picture
from reports.records import FINISHED, TrialRecord, value_sort_key
from reports.render import html_document, to_html_table
from reports.source import SweepData
from reports.tables import ComparisonTable

PAGE_CSS = """
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.meta dt { font-weight: bold; } dl.meta dd { margin: 0; font-family: monospace; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
pre.spec { background: #f6f6f6; padding: 1em; overflow-x: auto; border: 1px solid #ddd; }
div.trials { max-height: 48em; overflow: auto; }
table.trials tr.status-failed td, table.trials tr.status-killed td { color: #a00; }
table.trials code { font-size: 0.9em; }
""".strip()


def frame_table(frame: pd.DataFrame, caption: str = "", css_class: str = "ukd") -> str:
    out = [f'<table class="{html.escape(css_class, quote=True)}">']
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append(
        "<thead><tr>"
        + "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
        + "</tr></thead><tbody>"
    )
    for values in frame.itertuples(index=False):
        cells = []
        for value in values:
            if value is None or (isinstance(value, float) and value != value):
                text = ""
            elif isinstance(value, float):
                text = f"{value:.2f}"
            else:
                text = str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _meta(data: SweepData, table: ComparisonTable) -> str:
    counts = Counter(str(s) for s in data.runs["status"]) if len(data.runs) else Counter()
    status = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    items = [
        ("sweep", data.name),
        ("sweep id", data.sweep_id or ""),
        ("experiment id", data.ref.experiment_id),
        ("parent run", data.ref.parent_run_id),
        ("tracking URI", data.ref.tracking_uri),
        ("axes", ", ".join(data.axes or []) or "(not tagged)"),
        ("seeds", ", ".join(table.seeds)),
        ("trial runs", f"{len(data.runs)} ({status})"),
        ("metric", table.metric),
        ("generated", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return f'<dl class="meta">{body}</dl>'


def _problems(table: ComparisonTable) -> str:
    """Every run that did not finish with the metric, retried runs, and missing trials."""
    axes = table.axes
    rows: list[dict[str, str]] = []

    def add(record: TrialRecord, status: str) -> None:
        rows.append(
            {
                "trial": record.trial_id,
                "pair": record.row.label,
                "objective": record.column(axes).label,
                "seed": record.seed or "",
                "status": status,
                "epoch": record.failure_epoch or "",
                "reason": record.failure_reason or "",
            }
        )

    for record in table.records:
        if not record.finished_with_value:
            add(record, record.status if record.status != FINISHED else "FINISHED, no metric")
    for record in table.superseded:
        add(record, f"{record.status} (retried)")
    for (row, column), cell in table.cells.items():
        for seed in cell.missing_seeds:
            rows.append(
                {
                    "trial": "",
                    "pair": row.label,
                    "objective": column.label,
                    "seed": seed,
                    "status": "MISSING",
                    "epoch": "",
                    "reason": "expected trial has no run",
                }
            )
    if not rows:
        return "<p>All trial runs finished with the metric.</p>"
    rows.sort(key=lambda r: (r["pair"], r["objective"], value_sort_key(r["seed"]), r["status"]))
    return frame_table(pd.DataFrame(rows), css_class="ukd problems")


def _picture(picture: Picture) -> str:
    """A ``<figure>`` with the picture as an inline PNG data URI (the page needs no file)."""
    stem = html.escape(picture.stem, quote=True)
    return (
        f'<figure id="fig-{stem}"><img src="{picture.data_uri}" '
        f'alt="{html.escape(picture.title, quote=True)}">'
        f"<figcaption>{html.escape(picture.caption)} "
        f"<small>({html.escape(picture.png.name)}, {html.escape(picture.svg.name)})</small>"
        "</figcaption></figure>"
    )


def build_index_html(
    data: SweepData,
    table: ComparisonTable,
    ablations: Sequence[tuple[Ablation, AblationFiles]],
    *,
    charts: Sequence[Picture] = (),
    curves: Sequence[Picture] = (),
    parallel: Picture | None = None,
    parallel_note: str = "",
    trials_table: str = "",
    transfer_table: str = "",
) -> str:
    """The report page; every text is escaped, every plot is an inline PNG data URI.

    ``charts``: comparison charts (one per pair); ``curves``: learning curves;
    ``parallel``: the parallel-coordinates picture, else ``parallel_note`` says why there is
    none; ``trials_table``: the per-trial HTML table (already escaped);
    ``transfer_table``: the transfer table (already escaped; empty: none).
    """
    title = f"ukd report: {data.name}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        _meta(data, table),
        "<h2>Comparison</h2>",
        to_html_table(table),
        *[_picture(picture) for picture in charts],
        "<h2>Trials not finished</h2>",
        _problems(table),
    ]
    if transfer_table:
        parts += ['<h2 id="transfer">Transfer</h2>', transfer_table]
    if curves:
        parts.append('<h2 id="curves">Learning curves</h2>')
        parts.extend(_picture(picture) for picture in curves)
    if ablations:
        parts.append("<h2>Ablations</h2>")
    for ablation, files in ablations:
        encoded = base64.b64encode(files.png_bytes).decode("ascii")
        alt = f"{ablation.metric} against {ablation.axis}"
        parts += [
            f'<h3 id="ablation-{html.escape(ablation.stem, quote=True)}">'
            f"{html.escape(ablation.axis)}</h3>",
            f'<figure><img src="data:image/png;base64,{encoded}" '
            f'alt="{html.escape(alt, quote=True)}">'
            f"<figcaption>{html.escape(alt)}; error bars: sample std over seeds</figcaption>"
            "</figure>",
            frame_table(
                ablation.frame,
                caption=f"{ablation.metric} by {ablation.axis}: mean, std (ddof=1), n",
                css_class="ukd ablation",
            ),
        ]
    if parallel is not None:
        parts += ['<h2 id="parallel">Parallel coordinates</h2>', _picture(parallel)]
    elif parallel_note:
        parts.append('<h2 id="parallel">Parallel coordinates</h2>')
        parts.append(f"<p>{html.escape(parallel_note)}</p>")
    if trials_table:
        parts += ['<h2 id="trials">All trials</h2>', f'<div class="trials">{trials_table}</div>']
    parts.append("<h2>Sweep spec</h2>")
    if data.spec_text is not None:
        parts.append(f'<pre class="spec">{html.escape(data.spec_text)}</pre>')
    else:
        parts.append("<p>The parent run has no spec.yaml artifact.</p>")
    return html_document(title, "\n".join(parts), extra_css=PAGE_CSS)
