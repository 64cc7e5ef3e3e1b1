"""Reader-study analysis (`avn readers`): the paper's Tables VII, VIII and X and its figure 5.

Input: the three CSV files of ``avn.readers_format`` (truth, one or more reader files, optionally
the model's answers). A *read set* is one reader in one mode (``assisted`` no / yes) over the heads
that reader read in that mode. For each read set and for the model on the same heads:

* per diagnostic task (presence: absence vs presence, binary F1 of presence; collapse: absence /
  pre- / post-collapse, macro F1; staging: the four stages, macro F1), the F1 with a percentile
  bootstrap 95% CI, and per class the sensitivity and specificity with their CIs;
* the reader against the model (Table VII): paired bootstrap p-value of the F1 difference on the
  reader's heads; the reader without against with the system (Table VIII): paired when both modes
  read the same heads (the web app's first and final reads), unpaired otherwise (the paper's E1
  and E2 sets); see ``avn.evaluation.significance`` for the test and why not the paper's t-test;
* Cohen's kappa (unweighted, scikit-learn) of staging between every pair of raters in a mode, the
  ground truth included (Table X), each pair on the heads both read;
* the 4 × 4 staging confusion matrix of every read set (figure 5);
* the reading time per radiograph (``seconds``; the rows of one radiograph repeat its time, the
  largest value is used if they disagree) without and with the system.

``write_report`` turns the analysis into report.json, report.html (figures embedded) and PNGs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_curve

from avn.evaluation.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    bootstrap_ci,
    f1_rows,
    macro_f1_rows,
    sensitivity_rows,
    specificity_rows,
)
from avn.evaluation.html import Report, figure_png, format_ci, format_p, pyplot
from avn.evaluation.significance import PAIRED_METHOD, UNPAIRED_METHOD, paired_bootstrap, unpaired_bootstrap
from avn.metrics import to_jsonable
from avn.paper import PAPER_KAPPA, PAPER_READERS_ASSISTED, PAPER_READERS_E1
from avn.readers_format import ModelRow, ReaderFormatError, ReaderRow, read_model, read_reader, read_truth
from avn.vocabulary import COLLAPSE_CLASSES, COLLAPSE_INDEX_OF_STAGE, PRESENCE_CLASSES, PRESENCE_INDEX_OF_STAGE, STAGES

TASKS = ("presence", "collapse", "staging")
TASK_CLASSES = {"presence": PRESENCE_CLASSES, "collapse": COLLAPSE_CLASSES, "staging": STAGES}
TASK_TITLES = {
    "presence": "AVNFH detection (absence vs presence)",
    "collapse": "FH pre- vs post-collapse (absence / pre / post)",
    "staging": "AVNFH staging (absence / II / III / IV)",
}
MODES = ("no", "yes")
MODE_TITLES = {"no": "without the system", "yes": "with the system"}
MODEL = "model"
TRUTH = "GT"
SHORT_STAGE = {"absence": "Ab", "II": "S2", "III": "S3", "IV": "S4"}  # figure 5's labels
PAPER_NOTE = "paper, real radiographs"

_PRESENCE_OF = np.array(PRESENCE_INDEX_OF_STAGE)
_COLLAPSE_OF = np.array(COLLAPSE_INDEX_OF_STAGE)

Head = tuple[str, str]  # (case_id, side)


@dataclass(frozen=True)
class ReadSet:
    """One rater's staging reads of a list of heads, aligned with the ground truth."""

    rater: str
    mode: str  # "no" / "yes"; the model's reads carry the mode of the heads they are scored on
    heads: tuple[Head, ...]
    truth: np.ndarray  # stage indices
    predicted: np.ndarray  # stage indices
    seconds: dict[str, float]  # case_id → reading time of the radiograph (measured ones only)


@dataclass
class Study:
    truth: dict[Head, int]
    reads: list[ReadSet]
    model: dict[Head, ModelRow] | None


# ------------------------------------------------------------------------------------ loading


def load_study(truth_path: Path, reader_paths: Sequence[Path], model_path: Path | None = None) -> Study:
    """Read and cross-check the CSV files; errors name the file and line."""
    truth_rows = read_truth(truth_path)
    truth = {row.head: STAGES.index(row.stage) for row in truth_rows}
    grouped: dict[tuple[str, str], list[ReaderRow]] = {}
    for path in reader_paths:
        rows = read_reader(path)
        _check_known_heads(path, [row.head for row in rows], truth, truth_path)
        for row in rows:
            grouped.setdefault((row.reader, row.assisted), []).append(row)
    if not grouped:
        raise ReaderFormatError("no reader files given")
    reads = [
        _read_set(reader, mode, rows, truth) for (reader, mode), rows in sorted(grouped.items(), key=_reader_order)
    ]
    model = None
    if model_path is not None:
        model_rows = read_model(model_path)
        _check_known_heads(model_path, [row.head for row in model_rows], truth, truth_path)
        model = {row.head: row for row in model_rows}
        needed = {head for read in reads for head in read.heads}
        missing = sorted(needed - set(model))
        if missing:
            raise ReaderFormatError(
                f"{model_path}: no answer for {len(missing)} head(s) that readers read,"
                f" e.g. {missing[0][0]}/{missing[0][1]}"
            )
    return Study(truth, reads, model)


def _reader_order(item: tuple[tuple[str, str], list]) -> tuple[str, int]:
    (reader, mode), _ = item
    return (reader, MODES.index(mode))


def _check_known_heads(path: Path, heads: list[Head], truth: dict[Head, int], truth_path: Path) -> None:
    unknown = [(line, head) for line, head in enumerate(heads, start=2) if head not in truth]
    if unknown:
        text = "; ".join(f"line {line}: {case}/{side}" for line, (case, side) in unknown[:5])
        raise ReaderFormatError(f"{path}: {len(unknown)} head(s) not in the truth file {truth_path} ({text})")


def _read_set(reader: str, mode: str, rows: list[ReaderRow], truth: dict[Head, int]) -> ReadSet:
    heads = tuple(row.head for row in rows)
    seconds: dict[str, float] = {}
    for row in rows:
        if row.seconds is not None:
            seconds[row.case_id] = max(seconds.get(row.case_id, 0.0), row.seconds)
    return ReadSet(
        reader,
        mode,
        heads,
        np.array([truth[h] for h in heads]),
        np.array([STAGES.index(row.stage) for row in rows]),
        seconds,
    )


def model_read_set(study: Study, heads: Sequence[Head], mode: str) -> ReadSet:
    """The model's staging answers on ``heads``, shaped like a reader's."""
    if study.model is None:
        raise ValueError("the study has no model file")
    return ReadSet(
        MODEL,
        mode,
        tuple(heads),
        np.array([study.truth[h] for h in heads]),
        np.array([STAGES.index(study.model[h].stage) for h in heads]),
        {},
    )


# ------------------------------------------------------------------------------------ metrics


def task_labels(stage_indices: np.ndarray, task: str) -> np.ndarray:
    """Stage indices mapped to the task's class indices (vocabulary groupings)."""
    if task == "presence":
        return _PRESENCE_OF[stage_indices]
    if task == "collapse":
        return _COLLAPSE_OF[stage_indices]
    return np.asarray(stage_indices)


def f1_statistic(task: str):
    """Row-wise F1 of a task: binary F1 of ``presence``, macro F1 over the classes otherwise."""
    if task == "presence":
        return lambda truth, predicted: f1_rows(truth == 1, predicted == 1)
    classes = len(TASK_CLASSES[task])
    return lambda truth, predicted: macro_f1_rows(truth, predicted, classes)


def rater_metrics(read: ReadSet, resamples: int, seed: int) -> dict[str, Any]:
    """F1, sensitivity and specificity (each with a bootstrap CI) per task for one read set."""
    out: dict[str, Any] = {"heads": len(read.heads)}
    for task in TASKS:
        out[task] = _task_metrics(read, task, resamples, seed)
    return out


def _task_metrics(read: ReadSet, task: str, resamples: int, seed: int) -> dict[str, Any]:
    # A class absent from the heads leaves its sensitivity undefined (None): no warning for that.
    with np.errstate(invalid="ignore", divide="ignore"):
        truth, predicted = task_labels(read.truth, task), task_labels(read.predicted, task)
        per_class = {}
        # Presence reports its positive class only; the multi-class tasks one-vs-rest per class.
        classes = [1] if task == "presence" else range(len(TASK_CLASSES[task]))
        for k in classes:
            is_truth, is_predicted = truth == k, predicted == k
            per_class[TASK_CLASSES[task][k]] = {
                name: bootstrap_ci(rows, is_truth, is_predicted, resamples=resamples, seed=seed).to_dict()
                for name, rows in (
                    ("sensitivity", sensitivity_rows),
                    ("specificity", specificity_rows),
                    ("f1", f1_rows),
                )
            }
        return {
            "f1": bootstrap_ci(f1_statistic(task), truth, predicted, resamples=resamples, seed=seed).to_dict(),
            "per_class": per_class,
        }


def compare_paired(read_a: ReadSet, read_b: ReadSet, resamples: int, seed: int) -> dict[str, Any]:
    """F1(a) − F1(b) per task on the same heads (``read_b`` reordered to ``read_a``'s heads)."""
    order = {head: i for i, head in enumerate(read_b.heads)}
    index = np.array([order[head] for head in read_a.heads])
    predicted_b = read_b.predicted[index]
    return {
        task: paired_bootstrap(
            f1_statistic(task),
            task_labels(read_a.truth, task),
            task_labels(read_a.predicted, task),
            task_labels(predicted_b, task),
            resamples,
            seed,
        ).to_dict()
        for task in TASKS
    }


def compare_unpaired(read_a: ReadSet, read_b: ReadSet, resamples: int, seed: int) -> dict[str, Any]:
    return {
        task: unpaired_bootstrap(
            f1_statistic(task),
            task_labels(read_a.truth, task),
            task_labels(read_a.predicted, task),
            task_labels(read_b.truth, task),
            task_labels(read_b.predicted, task),
            resamples,
            seed,
        ).to_dict()
        for task in TASKS
    }


def kappa_table(reads: Sequence[ReadSet], truth: dict[Head, int]) -> dict[str, Any]:
    """Cohen's kappa of staging for every pair of raters (and the ground truth) on shared heads."""
    raters = {TRUTH: dict(truth)}
    raters.update({read.rater: dict(zip(read.heads, read.predicted.tolist(), strict=False)) for read in reads})
    names = list(raters)
    pairs = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = [head for head in raters[first] if head in raters[second]]
            value = None
            if shared:
                a = [raters[first][h] for h in shared]
                b = [raters[second][h] for h in shared]
                value = _kappa(a, b)
            pairs.append({"a": first, "b": second, "kappa": value, "heads": len(shared)})
    return {"raters": names, "pairs": pairs}


def _kappa(a: list[int], b: list[int]) -> float | None:
    """Kappa, or None where it is undefined (both raters gave a single, identical stage)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = cohen_kappa_score(a, b, labels=list(range(len(STAGES))))
    return None if np.isnan(value) else float(value)


def reading_time(read: ReadSet) -> dict[str, Any]:
    values = np.array(list(read.seconds.values()), dtype=float)
    if values.size == 0:
        return {"radiographs": 0, "mean": None, "median": None, "sd": None}
    return {
        "radiographs": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
    }


def staging_confusion(read: ReadSet) -> list[list[int]]:
    """4 × 4 counts, rows = ground truth, columns = the rater's stage (figure 5's G / P)."""
    return confusion_matrix(read.truth, read.predicted, labels=list(range(len(STAGES)))).tolist()


# ------------------------------------------------------------------------------------ analysis


def analyse(study: Study, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Every table of the report as plain data (report.json)."""
    readers = list(dict.fromkeys(read.rater for read in study.reads))  # in load order
    by_key = {(read.rater, read.mode): read for read in study.reads}
    document: dict[str, Any] = {
        "settings": {"bootstrap_resamples": resamples, "seed": seed, "level": DEFAULT_LEVEL},
        "p_value_methods": {"paired": PAIRED_METHOD, "unpaired": UNPAIRED_METHOD},
        "readers": readers,
        "modes": [m for m in MODES if any(read.mode == m for read in study.reads)],
        "heads": {"truth": len(study.truth), "read": len({h for read in study.reads for h in read.heads})},
        "read_sets": [],
        "model": {},
        "reader_vs_model": [],
        "assistance": [],
        "kappa": {},
        "confusion_matrices": [],
        "reading_time": [],
    }
    for read in study.reads:
        document["read_sets"].append(
            {"reader": read.rater, "mode": read.mode, "metrics": rater_metrics(read, resamples, seed)}
        )
        document["confusion_matrices"].append(
            {"rater": read.rater, "mode": read.mode, "matrix": staging_confusion(read)}
        )
        document["reading_time"].append({"reader": read.rater, "mode": read.mode, **reading_time(read)})
        if study.model is not None:
            model = model_read_set(study, read.heads, read.mode)
            document["reader_vs_model"].append(
                {
                    "reader": read.rater,
                    "mode": read.mode,
                    "heads": len(read.heads),
                    "model_metrics": rater_metrics(model, resamples, seed),
                    "model_minus_reader": compare_paired(model, read, resamples, seed),
                }
            )
    for mode in document["modes"]:
        mode_reads = [read for read in study.reads if read.mode == mode]
        raters = list(mode_reads)
        if study.model is not None:
            heads = _union_heads(mode_reads)
            model = model_read_set(study, heads, mode)
            document["model"][mode] = {"heads": len(heads), "metrics": rater_metrics(model, resamples, seed)}
            document["confusion_matrices"].append({"rater": MODEL, "mode": mode, "matrix": staging_confusion(model)})
            raters.append(model)
        document["kappa"][mode] = kappa_table(raters, {h: study.truth[h] for h in _union_heads(mode_reads)})
    for reader in readers:
        without, with_system = by_key.get((reader, "no")), by_key.get((reader, "yes"))
        if without is None or with_system is None:
            continue
        paired = set(without.heads) == set(with_system.heads)
        comparison = (compare_paired if paired else compare_unpaired)(with_system, without, resamples, seed)
        document["assistance"].append({"reader": reader, "paired": paired, "with_minus_without": comparison})
    document["paper"] = paper_reference()
    return to_jsonable(document)


def _union_heads(reads: Sequence[ReadSet]) -> list[Head]:
    seen: dict[Head, None] = {}
    for read in reads:
        for head in read.heads:
            seen.setdefault(head, None)
    return list(seen)


def paper_reference() -> dict[str, Any]:
    return {
        "note": PAPER_NOTE,
        "table_vii": PAPER_READERS_E1,
        "table_viii": PAPER_READERS_ASSISTED,
        "table_x": {
            mode: [{"a": a, "b": b, "kappa": k} for (a, b), k in pairs.items()] for mode, pairs in PAPER_KAPPA.items()
        },
    }


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
        heads = _union_heads(reads)
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
