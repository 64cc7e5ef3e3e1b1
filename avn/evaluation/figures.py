"""The report's figures (matplotlib, Agg backend): ROC curves, confusion matrices, the figure-4
uncertainty histograms and reliability diagrams. Each figure carries a title, axis labels with
units and a caption (drawn under the plot, so a PNG read on its own is still explained), and is
written as a PNG beside the report; :class:`Figure` keeps the bytes for the HTML to embed.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from avn.evaluation.collect import HeadTable  # noqa: E402
from avn.evaluation.tables import DiagnosisArrays  # noqa: E402
from avn.vocabulary import COLLAPSE_CLASSES, NOTES, PRESENCE_CLASSES, SIDES, STAGES, VIEWS  # noqa: E402

DPI = 110
PROBABILITY_AXIS = "probability (0–1, unitless)"


@dataclass(frozen=True)
class Figure:
    name: str  # file name, e.g. "roc.png"
    title: str
    caption: str
    png: bytes

    def write(self, folder: Path) -> Path:
        path = Path(folder) / self.name
        path.write_bytes(self.png)
        return path


def _finish(fig: plt.Figure, name: str, title: str, caption: str) -> Figure:
    fig.suptitle(title, fontsize=12, fontweight="bold")
    wrapped = "\n".join(textwrap.wrap(caption, width=int(fig.get_figwidth() * 16)))
    fig.text(0.01, 0.005, wrapped, ha="left", va="bottom", fontsize=8, color="#333333")
    lines = wrapped.count("\n") + 1
    fig.tight_layout(rect=(0, 0.03 + 0.028 * lines, 1, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return Figure(name, title, caption, buffer.getvalue())


# ---------------------------------------------------------------- ROC curves


def _roc_panel(ax: plt.Axes, title: str, curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One panel: a curve per (name, truth 0/1, score); a class seen with one value only is skipped."""
    for name, truth, score in curves:
        if np.unique(truth).size < 2:
            continue
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(truth, score):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.set(
        title=title,
        xlabel="1 − specificity (false-positive rate, fraction)",
        ylabel="sensitivity (true-positive rate, fraction)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


def roc_figure(heads: HeadTable) -> Figure:
    d = DiagnosisArrays.of(heads)
    fig, axes = plt.subplots(2, 3, figsize=(14, 9.5))
    _roc_panel(axes[0, 0], "exam view (positive: FL)", [(VIEWS[1], heads.view_truth, heads.view_probs[:, 1])])
    _roc_panel(axes[0, 1], "side (positive: right)", [(SIDES[1], heads.side_truth, heads.side_probs[:, 1])])
    _roc_panel(
        axes[0, 2],
        "notes (fused), one-vs-rest",
        [(note, heads.notes_truth[:, k], heads.notes_fused[:, k]) for k, note in enumerate(NOTES)],
    )
    _roc_panel(axes[1, 0], "presence (II–IV vs absence)", [(PRESENCE_CLASSES[1], d.presence_truth, d.presence_score)])
    collapse_probs = d.collapse_probs
    _roc_panel(
        axes[1, 1],
        "collapse, one-vs-rest",
        [
            (label, (d.collapse_truth == k).astype(int), collapse_probs[:, k])
            for k, label in enumerate(COLLAPSE_CLASSES)
        ],
    )
    _roc_panel(
        axes[1, 2],
        "staging, one-vs-rest",
        [(label, (d.stage_truth == k).astype(int), d.stage_probs[:, k]) for k, label in enumerate(STAGES)],
    )
    return _finish(
        fig,
        "roc.png",
        "ROC curves on the evaluated split (pipeline answers, matched heads)",
        f"ROC curves of the served probabilities over {len(heads)} femoral heads matched to truth "
        "(IoU > 0.5). Collapse and presence probabilities sum the staging model's stage probabilities. "
        "A class absent from the split has no curve.",
    )


# ---------------------------------------------------------------- confusion matrices


def _confusion_panel(ax: plt.Axes, matrix: np.ndarray, labels: Sequence[str], title: str) -> None:
    matrix = np.asarray(matrix, dtype=int)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{shares[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(title=title, xlabel="served answer (class)", ylabel="truth (class)")


def confusion_figure(matrices: dict[str, Any]) -> Figure:
    fig, axes = plt.subplots(1, 3, figsize=(14, 5))
    _confusion_panel(axes[0], matrices["presence"], PRESENCE_CLASSES, "presence")
    _confusion_panel(axes[1], matrices["collapse"], COLLAPSE_CLASSES, "collapse")
    _confusion_panel(axes[2], matrices["staging"], STAGES, "staging")
    return _finish(
        fig,
        "confusion.png",
        "Confusion matrices at the service's operating point",
        "Counts of femoral heads (and the share of each truth row); the served stage is the staging "
        "model's argmax, presence and collapse derive from it.",
    )


# ---------------------------------------------------------------- figure 4: uncertainty


def uncertainty_figure(section: dict[str, Any]) -> Figure:
    edges = np.asarray(section["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) * 0.4
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.bar(
        centres - width / 2,
        section["correct_percent"],
        width,
        label=f"correct ({section['correct_count']})",
        color="#2a7fbf",
    )
    ax.bar(
        centres + width / 2,
        section["incorrect_percent"],
        width,
        label=f"incorrect ({section['incorrect_count']})",
        color="#d9534f",
    )
    ax.set_xticks(edges)
    ax.set(
        xlabel=f"staging output {PROBABILITY_AXIS}, deciles",
        ylabel="share of answers in the group (%)",
        title="one-vs-rest staging answers by probability decile",
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _finish(
        fig,
        "uncertainty.png",
        "Uncertainty: probabilities of correct vs incorrect answers (paper's figure 4)",
        "Every (femoral head, stage) pair is a one-vs-rest answer; bars give the percentage of the correct "
        "(resp. incorrect) answers whose probability falls in each decile. The paper found correct answers "
        "near 0 or 1 and incorrect ones near 0.5 (its figure 4, on real radiographs).",
    )


# ---------------------------------------------------------------- reliability diagrams


def reliability_figure(section: dict[str, Any]) -> Figure:
    tasks = [row["task"] for row in section["rows"]]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.8))
    for ax, row in zip(np.atleast_1d(axes), section["rows"], strict=True):
        bins = section["reliability"][row["task"]]
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
        _reliability_line(ax, bins["before"], f"T = 1 (ECE {row['ece_before']:.3f})", "#d9534f")
        if bins["after"] is not None:
            _reliability_line(
                ax, bins["after"], f"T = {row['temperature']:.2f} (ECE {row['ece_after']:.3f})", "#2a7fbf"
            )
        ax.set(
            title=row["task"],
            xlabel=f"confidence, {PROBABILITY_AXIS}",
            ylabel="accuracy in the bin (fraction)",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    return _finish(
        fig,
        "reliability.png",
        "Reliability diagrams before and after temperature scaling",
        f"Answers binned by confidence ({section['bins']} equal-width bins; markers sized by count, empty "
        "bins omitted). Confidence is the top probability; for the notes every (head, note) pair is one "
        "answer with confidence max(p, 1 − p). The temperature was fitted on validation data.",
    )


def _reliability_line(ax: plt.Axes, bins: dict[str, Any], label: str, colour: str) -> None:
    counts = np.asarray(bins["counts"], dtype=float)
    filled = counts > 0
    confidence = np.asarray(bins["mean_confidence"], dtype=float)[filled]
    accuracy = np.asarray(bins["accuracy"], dtype=float)[filled]
    ax.plot(confidence, accuracy, marker="o", lw=1.2, color=colour, label=label, markersize=3)
    ax.scatter(confidence, accuracy, s=10 + 90 * counts[filled] / max(counts.max(), 1), color=colour, alpha=0.4)
