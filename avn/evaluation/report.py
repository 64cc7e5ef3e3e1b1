"""The evaluation report on disk: ``report.json`` (every number), ``report.html`` (self-contained:
figures embedded as base64 PNG) and the figures as PNG files beside them.

Every table shows our figure, its 95% CI and how it was obtained, then — in a separate, shaded
column group headed "paper, real radiographs" — the AVN-net paper's value for the same quantity, so
nobody reads the paper's hospital results as ours or the phantom's as the paper's.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avn.evaluation.figures import Figure
from avn.metrics import to_jsonable

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
td.paper, th.paper { background: #fff7e0; }
caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #555; padding-top: 0.4em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.meta td { text-align: left; } .note { color: #8a5a00; }
"""


def write_report(document: dict[str, Any], figures: Sequence[Figure], out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {figure.name: figure.write(out) for figure in figures}
    paths[REPORT_JSON] = out / REPORT_JSON
    paths[REPORT_JSON].write_text(json.dumps(to_jsonable(document), indent=1))
    paths[REPORT_HTML] = out / REPORT_HTML
    paths[REPORT_HTML].write_text(render_html(document, figures))
    return paths


# ---------------------------------------------------------------- HTML


def render_html(document: dict[str, Any], figures: Sequence[Figure]) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(document['title'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(document['title'])}</h1>",
        f"<p class='note'>{_e(document['paper_note'])}</p>",
        _meta_table(document),
    ]
    for key in ("table_ii", "table_iii", "table_iv", "table_v"):
        parts.append(_figure_table(document["tables"][key]))
    parts.append(_calibration_table(document["calibration"]))
    parts.append(_uncertainty_table(document["uncertainty"]))
    parts.append("<h2>Figures</h2>")
    parts += [_figure(figure) for figure in figures]
    parts.append("</body></html>")
    return "\n".join(parts)


def _meta_table(document: dict[str, Any]) -> str:
    data, intervals, timing, models = document["data"], document["intervals"], document["timing"], document["models"]
    rows = [
        ("generated (UTC)", document["generated"]),
        ("command", document.get("command") or ""),
        (
            "data set",
            f"{data['dir']} — split {data['split']}: {data['subjects']} subjects, {data['radiographs']} "
            f"radiographs ({data['radiographs_AP']} AP, {data['radiographs_FL']} FL), {data['truth_heads']} "
            f"femoral heads, {data['matched_heads']} matched by the pipeline",
        ),
        ("data set fingerprint (SHA-256)", data["fingerprint"]),
        (
            "models",
            f"{models['source']} {models['path']}"
            + (f"; training run {models['run']}" if models.get("run") and models["source"] == "store" else ""),
        ),
        *[
            (
                f"model {name}",
                f"{card['version']} ({card['architecture']}, input {card['input_size']} px,"
                f" T = {card['temperature']:.4g})",
            )
            for name, card in models["cards"].items()
        ],
        (
            "confidence intervals",
            f"{intervals['method']}: {intervals['resamples']} resamples, seed {intervals['seed']}, "
            f"level {intervals['level']:.0%}"
            + (
                f"; over CV repeats for {', '.join(intervals['repeated_cv_tasks'])}"
                if intervals["repeated_cv_tasks"]
                else ""
            ),
        ),
        (
            "run time",
            f"pipeline {timing['pipeline_seconds']} s ({timing['radiographs_per_second']} radiographs/s), "
            f"intervals {timing['interval_seconds']} s, total {timing['total_seconds']} s",
        ),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<h2>Run</h2><table class='meta'>{body}</table>"


def _figure_table(table: dict[str, Any]) -> str:
    head = (
        "<tr><th>figure</th><th>ours</th><th>95% CI</th><th>CI method</th><th>n</th>"
        "<th class='paper'>paper, real radiographs</th><th class='paper'>paper 95% CI</th></tr>"
    )
    body = []
    for row in table["rows"]:
        paper = row.get("paper") or {}
        body.append(
            f"<tr><td>{_e(row['label'])}</td><td>{_num(row['estimate'])}</td><td>{_ci(row['low'], row['high'])}</td>"
            f"<td>{_e(row.get('ci_method') or '')}</td><td>{_e(row.get('n') if row.get('n') is not None else '')}</td>"
            f"<td class='paper'>{_num(paper.get('value'))}</td>"
            f"<td class='paper'>{_ci(paper.get('low'), paper.get('high'))}</td></tr>"
        )
    return (
        f"<h2 id='{_e(table['id'])}'>{_e(table['title'])}</h2><table>{head}{''.join(body)}"
        f"<caption>{_e(table['caption'])}</caption></table>"
    )


def _calibration_table(section: dict[str, Any]) -> str:
    head = (
        "<tr><th>classifier</th><th>T served</th><th>T fitted</th><th>source of T</th><th>validation heads</th>"
        "<th>ECE before (T = 1)</th><th>ECE after</th><th>NLL before</th><th>NLL after</th><th>answers</th>"
        "<th class='paper'>paper, real radiographs</th></tr>"
    )
    body = "".join(
        f"<tr><td>{_e(r['task'])}</td><td>{_num(r['temperature_served'])}</td><td>{_num(r['temperature'])}</td>"
        f"<td>{_e(r['temperature_source'])}</td>"
        f"<td>{_e(r['validation_heads'] if r['validation_heads'] is not None else '')}</td>"
        f"<td>{_num(r['ece_before'])}</td><td>{_num(r['ece_after'])}</td><td>{_num(r['nll_before'])}</td>"
        f"<td>{_num(r['nll_after'])}</td><td>{r['answers']}</td><td class='paper'>not reported</td></tr>"
        for r in section["rows"]
    )
    notes = "".join(f"<p class='note'>{_e(note)}</p>" for note in section.get("notes", []))
    return (
        f"<h2 id='calibration'>{_e(section['title'])}</h2><table>{head}{body}"
        f"<caption>{_e(section['caption'])}</caption></table>{notes}"
    )


def _uncertainty_table(section: dict[str, Any]) -> str:
    edges = section["edges"]
    head = (
        "<tr><th>probability decile</th>"
        + "".join(f"<th>{edges[i]:.1f}–{edges[i + 1]:.1f}</th>" for i in range(10))
        + "</tr>"
    )
    rows = "".join(
        f"<tr><td>{label} ({count} answers), %</td>" + "".join(f"<td>{value:.1f}</td>" for value in values) + "</tr>"
        for label, count, values in (
            ("correct", section["correct_count"], section["correct_percent"]),
            ("incorrect", section["incorrect_count"], section["incorrect_percent"]),
        )
    )
    extremes = (
        f"Share of answers below 0.1 or at/above 0.9: correct {_num(section['correct_extreme_share'])}, "
        f"incorrect {_num(section['incorrect_extreme_share'])}."
    )
    return (
        f"<h2 id='uncertainty'>{_e(section['title'])}</h2><table>{head}{rows}"
        f"<caption>{_e(section['caption'])} {_e(extremes)}</caption></table>"
        f"<p><span class='paper'>Paper, real radiographs:</span> {_e(section['paper'])}</p>"
    )


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f"<figure id='{_e(figure.name)}'><img alt='{_e(figure.title)}' src='data:image/png;base64,{data}'>"
        f"<figcaption><b>{_e(figure.title)}</b> ({_e(figure.name)}). {_e(figure.caption)}</figcaption></figure>"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else _e(value)


def _ci(low: Any, high: Any) -> str:
    return "—" if low is None or high is None else f"{low:.4f}–{high:.4f}"
