"""The evaluation report on disk: ``report.json`` (every number), ``report.html`` (self-contained:
figures embedded as base64 PNG) and the figures as PNG files beside them.

Every table shows our figure, its 95% CI and how it was obtained, then — in a separate, shaded
column group headed "paper, real radiographs" — the AVN-net paper's value for the same quantity, so
nobody reads the paper's hospital results as ours or the phantom's as the paper's. The page is
written by :mod:`avn.evaluation.html`, the writer the reader study and the ablation use too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avn.evaluation.figures import Figure
from avn.evaluation.html import Report
from avn.metrics import to_jsonable

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PAPER_COLUMN = "paper, real radiographs"
PAPER = "paper"  # the css class of the paper's columns


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
    report = Report(document["title"])
    report.paragraph(document["paper_note"])
    _run_table(report, document)
    for key in ("table_ii", "table_iii", "table_iv", "table_v"):
        _figure_table(report, document["tables"][key])
    _calibration_table(report, document["calibration"])
    _operating_point_table(report, document["operating_points"])
    _uncertainty_table(report, document["uncertainty"])
    report.heading("Figures")
    for figure in figures:
        report.figure(
            figure.png, f"({figure.name}). {figure.caption}", alt=figure.title, title=figure.title, anchor=figure.name
        )
    return report.render()


def _run_table(report: Report, document: dict[str, Any]) -> None:
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
    report.heading("Run")
    report.key_value_table(rows)


def _figure_table(report: Report, table: dict[str, Any]) -> None:
    headers = ["figure", "ours", "95% CI", "CI method", "n", PAPER_COLUMN, "paper 95% CI"]
    rows = []
    for row in table["rows"]:
        paper = row.get("paper") or {}
        rows.append(
            [
                row["label"],
                row["estimate"],
                _ci(row["low"], row["high"]),
                row.get("ci_method") or "",
                row.get("n") if row.get("n") is not None else "",
                paper.get("value"),
                _ci(paper.get("low"), paper.get("high")),
            ]
        )
    report.heading(table["title"], anchor=table["id"])
    report.table(headers, rows, caption=table["caption"], column_classes=["", "", "", "", "", PAPER, PAPER])


def _calibration_table(report: Report, section: dict[str, Any]) -> None:
    headers = [
        "classifier",
        "T served",
        "T fitted",
        "source of T",
        "validation heads",
        "ECE before (T = 1)",
        "ECE after",
        "NLL before",
        "NLL after",
        "answers",
        PAPER_COLUMN,
    ]
    rows = [
        [
            r["task"],
            r["temperature_served"],
            r["temperature"],
            r["temperature_source"],
            r["validation_heads"] if r["validation_heads"] is not None else "",
            r["ece_before"],
            r["ece_after"],
            r["nll_before"],
            r["nll_after"],
            r["answers"],
            "not reported",
        ]
        for r in section["rows"]
    ]
    report.heading(section["title"], anchor="calibration")
    report.table(headers, rows, caption=section["caption"], column_classes=[""] * 10 + [PAPER])
    for note in section.get("notes", []):
        report.paragraph(note)


def _operating_point_table(report: Report, section: dict[str, Any]) -> None:
    headers = [
        "operating point",
        "threshold",
        "validation sensitivity",
        "validation specificity",
        "sensitivity",
        "specificity",
        "AVN / healthy heads",
    ]
    rows = [
        [
            r["name"],
            "" if r["threshold"] is None else r["threshold"],
            "" if r["validation_sensitivity"] is None else r["validation_sensitivity"],
            "" if r["validation_specificity"] is None else r["validation_specificity"],
            "" if r["sensitivity"] is None else r["sensitivity"],
            "" if r["specificity"] is None else r["specificity"],
            f"{r['positives']} / {r['negatives']}",
        ]
        for r in section["rows"]
    ]
    report.heading(section["title"], anchor="operating-points")
    report.table(headers, rows, caption=section["caption"])


def _uncertainty_table(report: Report, section: dict[str, Any]) -> None:
    edges = section["edges"]
    headers = ["probability decile", *(f"{edges[i]:.1f}–{edges[i + 1]:.1f}" for i in range(10))]
    rows = [
        [f"{label} ({count} answers), %", *(f"{value:.1f}" for value in values)]
        for label, count, values in (
            ("correct", section["correct_count"], section["correct_percent"]),
            ("incorrect", section["incorrect_count"], section["incorrect_percent"]),
        )
    ]
    extremes = (
        f"Share of answers below 0.1 or at/above 0.9: correct {_num(section['correct_extreme_share'])}, "
        f"incorrect {_num(section['incorrect_extreme_share'])}."
    )
    report.heading(section["title"], anchor="uncertainty")
    report.table(headers, rows, caption=f"{section['caption']} {extremes}")
    report.paragraph(section["paper"], css_class="", label="Paper, real radiographs:")


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _ci(low: Any, high: Any) -> str:
    return "—" if low is None or high is None else f"{low:.4f}–{high:.4f}"
