"""The project's one HTML report writer: used by `avn evaluate`, `avn readers` and `avn ablation`.

A report is one file that opens anywhere: inline CSS, figures embedded as base64 PNG data URIs, no
script, no network. :class:`Report` holds the page skeleton (title, stylesheet) and the pieces a
report is made of (headings, notes, tables, key/value tables, figures); every text is escaped here,
so callers pass plain strings. Also the number formats and the figure conventions shared by the
reports (matplotlib's Agg backend, a title, axis labels with units, a caption under each figure).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# "paper" marks the AVN-net paper's own figures (real radiographs): a whole table of them, or the
# paper's columns beside ours, so that nobody reads the paper's results as ours or ours as the paper's.
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
td.paper, th.paper { background: #fff7e0; }
caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #555; padding-top: 0.3em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.paper { color: #6a4c00; }
.note { font-size: 0.9em; color: #444; }
.meta td { text-align: left; }
"""


@dataclass
class Report:
    """An HTML document built section by section."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2, anchor: str = "") -> None:
        """A section heading; ``anchor`` gives it an id to link to."""
        attr = f' id="{_e(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{attr}>{_e(text)}</h{level}>")

    def paragraph(self, text: str, css_class: str = "note", label: str = "", label_class: str = "paper") -> None:
        """A paragraph; ``label`` starts it in its own style (whose figure the text is)."""
        lead = f'<span class="{label_class}">{_e(label)}</span> ' if label else ""
        attr = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{attr}>{lead}{_e(text)}</p>")

    def table(
        self,
        headers: Sequence[str],
        rows: Iterable[Sequence[object]],
        caption: str = "",
        css_class: str = "",
        column_classes: Sequence[str] = (),
    ) -> None:
        self.parts.append(html_table(headers, rows, caption, css_class, column_classes))

    def key_value_table(self, rows: Iterable[tuple[str, object]], css_class: str = "meta") -> None:
        """A two-column table whose row headers are the keys (run settings, provenance)."""
        body = "".join(f"<tr><th>{_e(key)}</th><td>{_e(_cell(value))}</td></tr>" for key, value in rows)
        self.parts.append(f'<table class="{css_class}">{body}</table>')

    def figure(self, png: bytes, caption: str, alt: str = "", title: str = "", anchor: str = "") -> None:
        """A PNG embedded as a data URI; ``title`` is printed in bold before the caption."""
        encoded = base64.b64encode(png).decode("ascii")
        attr = f' id="{_e(anchor)}"' if anchor else ""
        lead = f"<b>{_e(title)}</b> " if title else ""
        self.parts.append(
            f'<figure{attr}><img alt="{_e(alt or caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{lead}{_e(caption)}</figcaption></figure>"
        )

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(self.title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{_e(self.title)}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, path: Path) -> Path:
        path.write_text(self.render(), encoding="utf-8")
        return path


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    caption: str = "",
    css_class: str = "",
    column_classes: Sequence[str] = (),
) -> str:
    """A table; ``column_classes`` gives the header and the cells of each column a class ("" for none)."""
    classes = list(column_classes) + [""] * max(len(headers) - len(column_classes), 0)

    def cell(tag: str, value: object, column: int) -> str:
        name = classes[column] if column < len(classes) else ""
        attr = f' class="{name}"' if name else ""
        return f"<{tag}{attr}>{_e(_cell(value))}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>" for row in rows)
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    attr = f' class="{css_class}"' if css_class else ""
    return f"<table{attr}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    """A value as a table shows it: missing as a dash, fractions to four decimals."""
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
