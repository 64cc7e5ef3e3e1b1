"""A small self-contained HTML report writer for `avn readers` and `avn ablation`.

A report is one file that opens anywhere: inline CSS, figures embedded as base64 PNG, no script,
no network. Also the figure conventions shared by those reports (matplotlib's Agg backend, a
title, axis labels with units, a caption under each figure).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #555; padding-top: 0.3em; }
figure { margin: 1em 0 2em; }
figcaption { font-size: 0.85em; color: #555; }
.paper { color: #6a4c00; }
.note { font-size: 0.9em; color: #444; }
"""


@dataclass
class Report:
    """An HTML document built section by section."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css_class: str = "note") -> None:
        self.parts.append(f'<p class="{css_class}">{html.escape(text)}</p>')

    def table(
        self, headers: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "", css_class: str = ""
    ) -> None:
        self.parts.append(html_table(headers, rows, caption, css_class))

    def figure(self, png: bytes, caption: str, alt: str = "") -> None:
        encoded = base64.b64encode(png).decode("ascii")
        self.parts.append(
            f'<figure><img alt="{html.escape(alt or caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, path: Path) -> Path:
        path.write_text(self.render(), encoding="utf-8")
        return path


def html_table(headers: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "", css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    attr = f' class="{css_class}"' if css_class else ""
    return f"<table{attr}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_ci(estimate: float | None, low: float | None, high: float | None) -> str:
    """``0.8369 (0.8280–0.8458)`` as the paper prints an estimate with its 95% CI."""
    if estimate is None:
        return "n/a"
    if low is None or high is None:
        return f"{estimate:.4f}"
    return f"{estimate:.4f} ({low:.4f}–{high:.4f})"


def format_p(p: float | None) -> str:
    """p-values as the paper prints them: p<0.001, p<0.01, p<0.05, else p=0.xx."""
    if p is None:
        return "–"
    for bound in (0.001, 0.01, 0.05):
        if p < bound:
            return f"p<{bound:g}"
    return f"p={p:.2f}"


def pyplot():
    """matplotlib.pyplot on the Agg backend: reports render on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, path: Path | None = None, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (also written to ``path`` when given); the figure is closed."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    png = buffer.getvalue()
    if path is not None:
        path.write_bytes(png)
    return png
