"""Render a :class:`ComparisonTable` as Markdown, CSV, LaTeX (booktabs) and HTML."""

from __future__ import annotations

import html
import io

import pandas as pd

from reports.records import RowKey
from reports.tables import ABOVE, DAGGER, EMPTY, PLUS_MINUS, CellStats, ComparisonTable

PAIR_HEADER = "teacher -> student"
TEACHER_HEADER = "teacher"
TEST_HEADER = "best vs runner-up"


def _teacher_text(table: ComparisonTable, row: RowKey) -> str:
    value = table.teacher_ref.get(row)
    return EMPTY if value is None else f"{value:.{table.decimals}f}"


def _reference_text(table: ComparisonTable, kind: str, row: RowKey) -> str:
    """``86.4 ± 1.2 (n=2)``, ``86.4 (n=1)`` or ``—`` (no run of that student)."""
    ref = table.reference(kind, row)
    if ref is None or ref.mean is None:
        return EMPTY
    d = table.decimals
    value = f"{ref.mean:.{d}f}" + (f" {PLUS_MINUS} {ref.std:.{d}f}" if ref.std is not None
                                   else "")
    return f"{value} (n={ref.n})"


def _above(table: ComparisonTable, kind: str, row: RowKey) -> bool:
    return kind in table.references_above(row)


def _md_reference(table: ComparisonTable, kind: str, row: RowKey) -> str:
    body = _md_escape(_reference_text(table, kind, row))
    return f"**{body}** {ABOVE}" if _above(table, kind, row) else body


def _test_text(table: ComparisonTable, row: RowKey) -> str:
    _, runner_up, result = table.tests[row]
    if runner_up is None:
        return result.text()
    return f"vs {runner_up.label}: {result.text()}"


def _headers(table: ComparisonTable) -> list[str]:
    headers = [PAIR_HEADER]
    if table.teacher_metric:
        headers.append(TEACHER_HEADER)
    headers.extend(table.reference_kinds)
    headers.extend(column.label for column in table.columns)
    headers.append(TEST_HEADER)
    return headers


# --------------------------------------------------------------------------- Markdown


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def _md_cell(cell: CellStats | None, decimals: int) -> str:
    if cell is None:
        return EMPTY
    body = f"{cell.value_text(decimals)} {cell.count_text()}"
    body = _md_escape(body)
    if cell.best:
        body = f"**{body}**"
    return f"{body} {DAGGER}" if cell.incomplete else body


def to_markdown(table: ComparisonTable) -> str:
    """GitHub-flavoured Markdown: caption line, then the pipe table."""
    headers = _headers(table)
    lines = [
        f"**Table.** {_md_escape(table.caption)}",
        "",
        "| " + " | ".join(_md_escape(h) for h in headers) + " |",
        "| " + " | ".join([":---"] + ["---:"] * (len(headers) - 2) + [":---"]) + " |",
    ]
    for row in table.rows:
        cells = [_md_escape(row.label)]
        if table.teacher_metric:
            cells.append(_teacher_text(table, row))
        cells.extend(_md_reference(table, k, row) for k in table.reference_kinds)
        cells.extend(_md_cell(table.cell(row, c), table.decimals) for c in table.columns)
        cells.append(_md_escape(_test_text(table, row)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CSV


def comparison_frame(table: ComparisonTable) -> pd.DataFrame:
    """Long, numeric form: one line per (row, column) cell of the sweep.

    ``best`` is 1 for the row's best cell(s); ``reference_<kind>_above`` is 1 on every line
    of a row where that reference is above every objective; ``runner_up``/``welch_t``/``welch_p``/
    ``significant`` are filled on the best cell only (test of best vs runner-up).
    """
    records = []
    for row in table.rows:
        best_column, runner_up, result = table.tests[row]
        for column in table.columns:
            cell = table.cell(row, column)
            if cell is None:
                continue
            is_tested = column == best_column
            record: dict[str, object] = {
                "teacher": row.teacher,
                "student": row.student,
                "objective": column.objective,
                "column": column.label,
            }
            for axis in table.axes:
                record[axis] = column.setting(axis)
            record.update(
                {
                    "metric": table.value_metric,
                    "mean": cell.mean,
                    "std": cell.std,
                    "n": cell.n,
                    "expected": cell.expected,
                    "failed": cell.failed,
                    "killed": cell.killed,
                    "running": cell.running,
                    "no_metric": cell.no_metric,
                    "missing": cell.missing,
                    "best": int(cell.best),
                    "teacher_ref": table.teacher_ref.get(row),
                    **{f"reference_{kind}": _reference_mean(table, kind, row)
                       for kind in table.reference_kinds},
                    **{f"reference_{kind}_above": int(_above(table, kind, row))
                       for kind in table.reference_kinds},
                    "runner_up": runner_up.label if is_tested and runner_up else None,
                    "welch_t": result.t if is_tested else None,
                    "welch_p": result.p if is_tested else None,
                    "significant": (
                        int(result.significant)
                        if is_tested and result.significant is not None
                        else None
                    ),
                }
            )
            records.append(record)
    columns = ["teacher", "student", "objective", "column", *table.axes, "metric", "mean", "std"]
    columns += ["n", "expected", "failed", "killed", "running", "no_metric", "missing", "best"]
    columns += ["teacher_ref", *(f"reference_{kind}" for kind in table.reference_kinds)]
    columns += [f"reference_{kind}_above" for kind in table.reference_kinds]
    columns += ["runner_up", "welch_t", "welch_p", "significant"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    for name in ("n", "expected", "failed", "killed", "running", "no_metric", "missing", "best",
                 *(f"reference_{kind}_above" for kind in table.reference_kinds)):
        frame[name] = frame[name].astype("int64")
    frame["significant"] = frame["significant"].astype("Int64")
    return frame


def _reference_mean(table: ComparisonTable, kind: str, row: RowKey) -> float | None:
    ref = table.reference(kind, row)
    return None if ref is None else ref.mean


def to_csv(table: ComparisonTable) -> str:
    buffer = io.StringIO()
    comparison_frame(table).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


# --------------------------------------------------------------------------- LaTeX

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "—": "---",
    "→": r"$\rightarrow$",
    "·": r"$\cdot$",
    "λ": r"$\lambda$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (and map ±, †, —, →, ·, λ to math)."""
    text = text.replace("->", "→")
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _latex_cell(cell: CellStats | None, decimals: int) -> str:
    if cell is None:
        return "---"
    value = latex_escape(cell.value_text(decimals))
    counts = latex_escape(cell.count_text())
    body = rf"\textbf{{{value}}}" if cell.best else value
    body = rf"{body} {{\footnotesize {counts}}}"
    return body + r"$^\dagger$" if cell.incomplete else body


def _latex_reference(table: ComparisonTable, kind: str, row: RowKey) -> str:
    body = latex_escape(_reference_text(table, kind, row))
    return rf"\textbf{{{body}}}{latex_escape(ABOVE)}" if _above(table, kind, row) else body


def to_latex(table: ComparisonTable, label: str = "tab:ukd-comparison") -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``), hand-written."""
    headers = _headers(table)
    align = ("l" + ("r" if table.teacher_metric else "") + "r" * len(table.reference_kinds)
             + "r" * len(table.columns) + "l")
    lines = [
        "% Generated by ukd reports; requires \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = [latex_escape(row.label)]
        if table.teacher_metric:
            cells.append(latex_escape(_teacher_text(table, row)))
        cells.extend(_latex_reference(table, k, row) for k in table.reference_kinds)
        cells.extend(_latex_cell(table.cell(row, c), table.decimals) for c in table.columns)
        cells.append(latex_escape(_test_text(table, row)))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML

TABLE_CSS = """
table.ukd { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
table.ukd caption { caption-side: top; text-align: left; padding: 0.4em 0; color: #333; }
table.ukd th, table.ukd td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; }
table.ukd thead th { border-bottom: 2px solid #444; text-align: center; }
table.ukd td.num { text-align: right; white-space: nowrap; }
table.ukd td.best { background: #e8f4e8; }
table.ukd td.above { background: #fbeaea; }
table.ukd td.incomplete .dagger { color: #b00; }
table.ukd td.missing { color: #999; text-align: center; }
""".strip()


def _html_cell(cell: CellStats | None, decimals: int) -> str:
    if cell is None:
        return f'<td class="missing">{html.escape(EMPTY)}</td>'
    classes = ["num"]
    if cell.best:
        classes.append("best")
    if cell.incomplete:
        classes.append("incomplete")
    value = html.escape(cell.value_text(decimals))
    if cell.best:
        value = f"<strong>{value}</strong>"
    body = f"{value} <small>{html.escape(cell.count_text())}</small>"
    if cell.incomplete:
        body += f' <span class="dagger">{html.escape(DAGGER)}</span>'
    title = html.escape(", ".join(cell.issues()) or f"seeds {', '.join(cell.seeds)}", quote=True)
    return f'<td class="{" ".join(classes)}" title="{title}">{body}</td>'


def _html_reference(table: ComparisonTable, kind: str, row: RowKey) -> str:
    text = html.escape(_reference_text(table, kind, row))
    if not _above(table, kind, row):
        return f'<td class="num reference">{text}</td>'
    return (f'<td class="num reference above" title="above every objective of the row">'
            f'<strong>{text}</strong> <span class="above">{html.escape(ABOVE)}</span></td>')


def to_html_table(table: ComparisonTable) -> str:
    """An HTML ``<table>`` fragment (classes ``ukd``), all text escaped."""
    out = [
        '<table class="ukd comparison">',
        f"<caption>{html.escape(table.caption)}</caption>",
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in _headers(table)),
        "</tr></thead>",
        "<tbody>",
    ]
    for row in table.rows:
        cells = [f"<th>{html.escape(row.label)}</th>"]
        if table.teacher_metric:
            cells.append(f'<td class="num">{html.escape(_teacher_text(table, row))}</td>')
        cells.extend(_html_reference(table, k, row) for k in table.reference_kinds)
        cells.extend(_html_cell(table.cell(row, c), table.decimals) for c in table.columns)
        cells.append(f"<td>{html.escape(_test_text(table, row))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def html_document(title: str, body: str, extra_css: str = "") -> str:
    """A complete, self-contained HTML page."""
    css = TABLE_CSS + ("\n" + extra_css if extra_css else "")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>\nbody {{ font-family: sans-serif; margin: 2em; }}\n{css}\n</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def to_html(table: ComparisonTable) -> str:
    """``comparison.html``: the table as a standalone page."""
    title = f"ukd comparison: {table.sweep_name}" if table.sweep_name else "ukd comparison"
    return html_document(title, f"<h1>{html.escape(title)}</h1>\n{to_html_table(table)}")


def markdown_frame(frame: pd.DataFrame, float_format: str = ".2f") -> str:
    """A plain pipe table of a data frame (no tabulate dependency)."""
    headers = [str(c) for c in frame.columns]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
    ]
    for values in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_value(v, float_format) for v in values) + " |")
    return "\n".join(lines) + "\n"


def _md_value(value: object, float_format: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return format(value, float_format)
    return _md_escape(str(value))
