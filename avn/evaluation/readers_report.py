"""The reader study's report (`avn readers`): report.json, a self-contained report.html and the PNG
figures, from the plain-data analysis of :func:`avn.evaluation.readers.analyse`.

The HTML shows our tables (Tables VII, VIII and X of the paper: F1, sensitivity and specificity with
bootstrap CIs, p-values, reading times, kappa) each followed by the paper's own table, marked as
the paper's; the figures are the staging confusion matrices (figure 5), the reading times and, with
a model file, the model's ROC curves with the readers' operating points (figure 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from avn.evaluation.html import Report, figure_png, format_ci, format_p, pyplot
from avn.evaluation.readers import MODEL, MODES, PAPER_NOTE, TASKS, TRUTH, Study, union_heads
from avn.paper import PAPER_READERS_ASSISTED
from avn.vocabulary import STAGES

TASK_TITLES = {
    "presence": "AVNFH detection (absence vs presence)",
    "collapse": "FH pre- vs post-collapse (absence / pre / post)",
    "staging": "AVNFH staging (absence / II / III / IV)",
}
MODE_TITLES = {"no": "without the system", "yes": "with the system"}
SHORT_STAGE = {"absence": "Ab", "II": "S2", "III": "S3", "IV": "S4"}  # figure 5's labels

# ------------------------------------------------------------------------------------ report


def write_report(document: dict[str, Any], study: Study, out: Path, title: str = "Reader study") -> dict[str, Path]:
    """report.json, report.html (self-contained) and the PNG figures into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "report.json", "html": out / "report.html"}
    files["json"].write_text(json.dumps(document, indent=1))
    report = Report(title)
    report.paragraph(
        f"{len(document['readers'])} reader(s), {document['heads']['read']} femoral heads read "
        f"({document['heads']['truth']} in the truth file). 95% CIs: percentile bootstrap over heads, "
        f"{document['settings']['bootstrap_resamples']} resamples, seed {document['settings']['seed']}. "
        f"p-values: {document['p_value_methods']['paired']} for reader vs model and for with vs without the system "
        f"on the same heads; {document['p_value_methods']['unpaired']} when the two modes read different heads. "
        "The paper's own figures (tables marked “paper, real radiographs”) come from its hospital's radiographs "
        "and four orthopedists; they are there for reference, not for a one-to-one match."
    )
    _reader_tables(report, document)
    _assistance_table(report, document)
    _kappa_tables(report, document)
    figures = {
        "confusion": (
            "confusion_matrices.png",
            _confusion_figure(document),
            "Figure: staging confusion matrices of every reader and the model (rows G = ground truth, columns "
            "P = prediction; Ab absence, S2–S4 stages II–IV; counts of femoral heads), as the paper's figure 5.",
        ),
        "time": (
            "reading_time.png",
            _time_figure(document, study),
            "Figure: reading time per radiograph (seconds) of each reader without and with the system; boxes "
            "show quartiles, dots single radiographs, diamonds the paper's means (Table VIII).",
        ),
    }
    if study.model is not None:
        figures["roc"] = (
            "roc.png",
            _roc_figure(document, study),
            "Figure: ROC curves of the model (one vs rest) with each reader's operating point "
            "(sensitivity, 1 − specificity), per mode, as the paper's figure 3.",
        )
    for key, (name, fig, caption) in figures.items():
        files[key] = out / name
        report.figure(figure_png(fig, files[key]), caption)
    report.write(files["html"])
    return files


def _reader_tables(report: Report, document: dict[str, Any]) -> None:
    report.heading("Readers against the model (Table VII)")
    vs_model = {(row["reader"], row["mode"]): row for row in document["reader_vs_model"]}
    for mode in document["modes"]:
        sets = [s for s in document["read_sets"] if s["mode"] == mode]
        headers = ["task", "metric"]
        if mode in document["model"]:
            headers.append(f"model ({document['model'][mode]['heads']} heads)")
        headers += [f"{s['reader']} ({s['metrics']['heads']} heads)" for s in sets]
        rows = []
        for task in TASKS:
            row = [TASK_TITLES[task], "F1 (95% CI)"]
            if mode in document["model"]:
                row.append(_ci_text(document["model"][mode]["metrics"][task]["f1"]))
            row += [_ci_text(s["metrics"][task]["f1"]) for s in sets]
            rows.append(row)
            if vs_model:
                p_row = [TASK_TITLES[task], "p (model vs reader)"]
                p_row += ["–"] if mode in document["model"] else []
                p_row += [format_p(vs_model[(s["reader"], mode)]["model_minus_reader"][task]["p_value"]) for s in sets]
                rows.append(p_row)
        report.heading(f"Readers {MODE_TITLES[mode]}: F1 and p-values", level=3)
        report.table(
            headers, rows, caption="Ours. p: paired bootstrap, two-sided, model minus reader on the reader's heads."
        )
        report.heading(f"Readers {MODE_TITLES[mode]}: sensitivity and specificity per class", level=3)
        report.table(*_sens_spec_rows(document, mode, sets), caption="Ours: point estimate (95% bootstrap CI).")
    paper = document["paper"]["table_vii"]
    names = list(next(iter(paper.values())))
    report.table(
        ["task", *names],
        [[TASK_TITLES[t], *(f"{v[0]:.4f} ({v[1]:.4f}–{v[2]:.4f}) {v[3]}" for v in paper[t].values())] for t in TASKS],
        caption=f"Table VII, {PAPER_NOTE}: F1 (95% CI) on E1 and the paper's t-test p against AVN-net; "
        "R1, R2 residents, S1, S2 attending surgeons.",
        css_class="paper",
    )


def _sens_spec_rows(document: dict[str, Any], mode: str, sets: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = [("model", document["model"][mode]["metrics"])] if mode in document["model"] else []
    columns += [(s["reader"], s["metrics"]) for s in sets]
    rows = []
    for task in TASKS:
        for label, _ in columns[0][1][task]["per_class"].items():
            for metric in ("sensitivity", "specificity"):
                rows.append(
                    [f"{task}: {label}", metric, *(_ci_text(m[task]["per_class"][label][metric]) for _, m in columns)]
                )
    return ["task: class", "metric", *(name for name, _ in columns)], rows


def _assistance_table(report: Report, document: dict[str, Any]) -> None:
    report.heading("Reading with the system (Table VIII)")
    f1 = {(s["reader"], s["mode"]): s["metrics"]["staging"]["f1"] for s in document["read_sets"]}
    times = {(t["reader"], t["mode"]): t for t in document["reading_time"]}
    rows = []
    for reader in document["readers"]:
        comparison = next((a for a in document["assistance"] if a["reader"] == reader), None)
        rows.append(
            [
                reader,
                _ci_text(f1.get((reader, "no"))),
                _ci_text(f1.get((reader, "yes"))),
                format_p(comparison["with_minus_without"]["staging"]["p_value"]) if comparison else "–",
                ("paired" if comparison["paired"] else "unpaired") if comparison else "–",
                _seconds_text(times.get((reader, "no"))),
                _seconds_text(times.get((reader, "yes"))),
            ]
        )
    headers = [
        "reader",
        "staging F1 without (95% CI)",
        "staging F1 with (95% CI)",
        "p (with vs without)",
        "test",
        "s/radiograph without",
        "s/radiograph with",
    ]
    report.table(headers, rows, caption="Ours: time = mean seconds per radiograph (radiographs timed).")
    paper = document["paper"]["table_viii"]
    report.table(
        headers[:4] + headers[5:],
        [
            [
                r,
                _paper_ci(v["without"]),
                _paper_ci(v["with"]),
                v["p"],
                f"{v['seconds'][0]:.1f}",
                f"{v['seconds'][1]:.1f}",
            ]
            for r, v in paper.items()
        ],
        caption=f"Table VIII, {PAPER_NOTE}: without on E1, with on E2; the paper's t-test p.",
        css_class="paper",
    )


def _kappa_tables(report: Report, document: dict[str, Any]) -> None:
    report.heading("Agreement: Cohen's kappa of staging (Table X)")
    for mode, table in document["kappa"].items():
        report.table(
            *_kappa_matrix(table["raters"], table["pairs"]),
            caption=f"Ours, {MODE_TITLES[mode]}: unweighted Cohen's kappa on the heads both raters read;"
            " GT = ground truth.",
        )
    for mode, pairs in document["paper"]["table_x"].items():
        raters = [TRUTH] + sorted({p[k] for p in pairs for k in ("a", "b")} - {TRUTH})
        report.table(
            *_kappa_matrix(raters, pairs), caption=f"Table X, {PAPER_NOTE}, {mode} AVN-net.", css_class="paper"
        )


def _kappa_matrix(raters: list[str], pairs: list[dict]) -> tuple[list[str], list[list[str]]]:
    value = {frozenset((p["a"], p["b"])): p["kappa"] for p in pairs}
    rows = []
    for first in raters:
        row = [first]
        for second in raters:
            kappa = 1.0 if first == second else value.get(frozenset((first, second)))
            row.append("—" if kappa is None else f"{kappa:.2f}")
        rows.append(row)
    return ["", *raters], rows


def _ci_text(ci: dict | None) -> str:
    return "—" if ci is None else format_ci(ci["estimate"], ci["low"], ci["high"])


def _paper_ci(value: tuple[float, float, float]) -> str:
    return format_ci(*value)


def _seconds_text(entry: dict | None) -> str:
    if entry is None or entry["mean"] is None:
        return "—"
    return f"{entry['mean']:.1f} ({entry['radiographs']})"


# ------------------------------------------------------------------------------------ figures


def _confusion_figure(document: dict[str, Any]):
    plt = pyplot()
    entries = document["confusion_matrices"]
    columns = min(4, len(entries))
    rows = -(-len(entries) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.0 * rows), squeeze=False)
    labels = [SHORT_STAGE[s] for s in STAGES]
    for ax, entry in zip(axes.ravel(), entries, strict=False):
        matrix = np.array(entry["matrix"])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > matrix.max() / 2 else "black",
                fontsize=9,
            )
        ax.set_xticks(range(len(labels)), [f"P-{label}" for label in labels], fontsize=8)
        ax.set_yticks(range(len(labels)), [f"G-{label}" for label in labels], fontsize=8)
        where = "heads read " if entry["rater"] == MODEL else ""
        ax.set_title(f"{entry['rater']}, {where}{MODE_TITLES[entry['mode']]}", fontsize=9)
        ax.set_xlabel("prediction (heads)", fontsize=8)
        ax.set_ylabel("ground truth (heads)", fontsize=8)
    for ax in axes.ravel()[len(entries) :]:
        ax.axis("off")
    fig.suptitle("Staging confusion matrices (counts of femoral heads)")
    fig.tight_layout()
    return fig


def _time_figure(document: dict[str, Any], study: Study):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(document["readers"])), 4.0))
    times = {(t["reader"], t["mode"]): t for t in document["reading_time"]}
    colours = {"no": "#4c72b0", "yes": "#dd8452"}
    samples = {(read.rater, read.mode): sorted(read.seconds.values()) for read in study.reads}
    for i, reader in enumerate(document["readers"]):
        for offset, mode in ((-0.18, "no"), (0.18, "yes")):
            values = samples.get((reader, mode), [])
            if values:
                ax.boxplot(
                    [values],
                    positions=[i + offset],
                    widths=0.3,
                    showfliers=False,
                    patch_artist=True,
                    boxprops={"facecolor": colours[mode], "alpha": 0.5},
                )
                jitter = np.random.default_rng(i).uniform(-0.08, 0.08, len(values))
                ax.plot(i + offset + jitter, values, ".", color=colours[mode], alpha=0.6, markersize=3)
            elif times.get((reader, mode), {}).get("mean") is not None:
                ax.plot(i + offset, times[(reader, mode)]["mean"], "o", color=colours[mode])
            paper = PAPER_READERS_ASSISTED.get(reader)
            if paper:
                ax.plot(i + offset, paper["seconds"][MODES.index(mode)], "D", color="black", markersize=5)
    for mode in MODES:
        ax.plot([], [], "s", color=colours[mode], label=MODE_TITLES[mode])
    ax.plot([], [], "D", color="black", label=f"mean, {PAPER_NOTE} (Table VIII)")
    ax.set_xticks(range(len(document["readers"])), document["readers"])
    ax.set_xlabel("reader")
    ax.set_ylabel("reading time per radiograph (s)")
    ax.set_title("Reading time without and with the system")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _roc_figure(document: dict[str, Any], study: Study):
    plt = pyplot()
    panels = [("presence", "presence", None)] + [("staging", stage, k) for k, stage in enumerate(STAGES)]
    modes = document["modes"]
    fig, axes = plt.subplots(len(modes), len(panels), figsize=(3.0 * len(panels), 3.1 * len(modes)), squeeze=False)
    for row, mode in enumerate(modes):
        reads = [read for read in study.reads if read.mode == mode]
        heads = union_heads(reads)
        truth = np.array([study.truth[h] for h in heads])
        probabilities = np.array([study.model[h].probabilities() for h in heads])
        for col, (_task, label, k) in enumerate(panels):
            ax = axes[row, col]
            positive = truth != 0 if k is None else truth == k
            score = 1.0 - probabilities[:, 0] if k is None else probabilities[:, k]
            if positive.any() and (~positive).any():
                fpr, tpr, _ = roc_curve(positive, score)
                ax.plot(fpr, tpr, color="#333", label="model")
            for read in reads:
                is_pos = read.truth != 0 if k is None else read.truth == k
                said = read.predicted != 0 if k is None else read.predicted == k
                if is_pos.any() and (~is_pos).any():
                    ax.plot(
                        1 - (~said & ~is_pos).sum() / (~is_pos).sum(),
                        (said & is_pos).sum() / is_pos.sum(),
                        "o",
                        label=read.rater,
                    )
            ax.plot([0, 1], [0, 1], ":", color="#aaa")
            ax.set_title(f"{'presence' if k is None else 'stage ' + label}, {MODE_TITLES[mode]}", fontsize=9)
            ax.set_xlabel("1 − specificity (fraction)", fontsize=8)
            ax.set_ylabel("sensitivity (fraction)", fontsize=8)
            if col == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("ROC of the model (one vs rest) with the readers' operating points")
    fig.tight_layout()
    return fig
