"""``avn data``: check a data-set folder and draw its annotations (mounted by avn/cli.py).

Exit codes: ``check`` returns 1 when the set has errors (or, with ``--strict``, any warning) and 0
otherwise; ``show`` returns 1 when the image cannot be drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(
    help="Check and inspect data sets in the AVN-net format (annotations.json + images; docs/dataset.md).",
    no_args_is_help=True,
)


@data_app.command("check")
def check_command(
    directory: Annotated[Path, typer.Argument(help="Data-set folder holding annotations.json.")],
    strict: Annotated[bool, typer.Option("--strict", help="Fail on warnings too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Validate a data set: report every problem (file: item: field: message) and the counts."""
    from avn.dataset.check import check_dataset

    report = check_dataset(directory)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        typer.echo(report.format_text(), nl=False)
    if not report.passes(strict):
        raise typer.Exit(1)


@data_app.command("show")
def show_command(
    directory: Annotated[Path, typer.Argument(help="Data-set folder holding annotations.json.")],
    image: Annotated[int, typer.Option("--image", help="Image id (the 'id' in annotations.json images).")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    max_side: Annotated[int, typer.Option("--max-side", min=1, help="Longest side of the PNG.")] = 1600,
) -> None:
    """Draw one radiograph with its femoral-head boxes, sides, stages and notes into a PNG."""
    from avn.dataset.show import render_annotated

    try:
        path = render_annotated(directory, image, out, max_side=max_side)
    except ValueError as error:  # ShowError, UnknownImageError and ImageReadError all are
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"wrote {path}")
