"""Builds a phantom data set folder: plans the cohort, renders in parallel, writes files and JSON.

Each worker renders and writes whole radiographs from their specs; the main process assigns ids
in plan order, so the output is byte-identical for a seed whatever ``workers`` is.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from avn.dataset.format import Dataset, DatasetInfo, FemoralHeadAnnotation, ImageRecord, save_dataset
from avn.phantom.cohort import plan_cohort
from avn.phantom.render import render_radiograph
from avn.phantom.specs import RadiographSpec, RenderedHead
from avn.phantom.writers import write_dicom, write_png
from avn.vocabulary import SPLITS

FORMATS = ("dicom", "png")
SUFFIX = {"dicom": ".dcm", "png": ".png"}


@dataclass(frozen=True)
class PhantomOptions:
    subjects: int
    seed: int = 0
    image_format: str = "dicom"
    scale: float = 1.0  # < 1 shrinks every radiograph (fast tests); 1 = full detector size

    def __post_init__(self) -> None:
        if self.image_format not in FORMATS:
            raise ValueError(f"unknown format {self.image_format!r}; expected one of {FORMATS}")
        if not 0.05 <= self.scale <= 1.0:
            raise ValueError("scale must lie in [0.05, 1]")


@dataclass(frozen=True)
class WrittenRadiograph:
    spec: RadiographSpec
    file_name: str
    width: int
    height: int
    pixel_spacing_mm: float
    heads: list[RenderedHead]
    prosthetic_heads: list[tuple[float, float, float, float]]


def relative_file_name(spec: RadiographSpec, image_format: str) -> str:
    return f"images/{spec.subject_id}/{spec.image_id:06d}_{spec.view}{SUFFIX[image_format]}"


def render_and_write(job: tuple[RadiographSpec, PhantomOptions, str]) -> WrittenRadiograph:
    spec, options, out_dir = job
    image = render_radiograph(spec, scale=options.scale)
    file_name = relative_file_name(spec, options.image_format)
    path = Path(out_dir) / file_name
    if options.image_format == "dicom":
        write_dicom(path, spec, image, options.seed)
    else:
        write_png(path, image)
    return WrittenRadiograph(
        spec, file_name, image.width, image.height, image.pixel_spacing_mm, image.heads, image.prosthetic_heads
    )


def build_phantom(
    options: PhantomOptions,
    out_dir: Path,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Write the data set to ``out_dir`` and return its annotations (also saved as JSON)."""
    plans, specs = plan_cohort(options.subjects, options.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, options, str(out_dir)) for spec in specs]
    written: list[WrittenRadiograph] = []
    for done, item in enumerate(_run_jobs(jobs, workers or os.cpu_count() or 1), start=1):
        written.append(item)
        if on_progress:
            on_progress(done, len(jobs))
    dataset = assemble_dataset(options, written, {plan.subject_id: plan.split for plan in plans})
    save_dataset(dataset, out_dir)
    return dataset


def _run_jobs(jobs: list, workers: int) -> Iterator[WrittenRadiograph]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(render_and_write, jobs)
        return
    # Forking after torch or BLAS threads started can deadlock; spawn is slower to start but safe.
    with mp.get_context("spawn").Pool(processes=min(workers, len(jobs))) as pool:
        yield from pool.imap(render_and_write, jobs, chunksize=1)


def assemble_dataset(options: PhantomOptions, written: list[WrittenRadiograph], split_of: dict[str, str]) -> Dataset:
    images, annotations = [], []
    for item in written:
        images.append(
            ImageRecord(
                id=item.spec.image_id,
                file_name=item.file_name,
                width=item.width,
                height=item.height,
                subject_id=item.spec.subject_id,
                view=item.spec.view,
                pixel_spacing=(item.pixel_spacing_mm, item.pixel_spacing_mm),
                prosthetic_heads=[tuple(round(v, 2) for v in box) for box in item.prosthetic_heads],
            )
        )
        for head in item.heads:
            x, y, w, h = (round(v, 2) for v in head.bbox)
            annotations.append(
                FemoralHeadAnnotation(
                    id=len(annotations) + 1,
                    image_id=item.spec.image_id,
                    bbox=(x, y, w, h),
                    area=round(w * h, 2),
                    side=head.side,
                    stage=head.stage,
                    notes=list(head.notes),
                    typical=head.typical,
                )
            )
    splits = {name: sorted(s for s, split in split_of.items() if split == name) for name in SPLITS}
    info = DatasetInfo(
        description=f"AVN-net phantom, {options.subjects} subjects, scale {options.scale}",
        generator="avn phantom",
        seed=options.seed,
    )
    return Dataset(info=info, images=images, annotations=annotations, splits=splits)
