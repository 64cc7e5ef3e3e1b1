"""The web app's self-study case bank: radiographs with their ground truth, read from a data-set folder.

The bank is a folder in the project's data-set format (``annotations.json`` beside the images,
:mod:`avn.dataset.format`, docs/dataset.md) named by ``AVN_CASE_BANK``: by default the demo set
``data/demo`` that ``make run`` builds. Its E3 split is the bank (the paper's third external set,
which no model trains or is selected on) when E3 holds at least ``MIN_SPLIT_CASES`` cases; otherwise
every radiograph of the folder is, so that a hospital's own teaching folder works as it is and the
20-subject demo set (one E3 subject; the quick models never see any of it, they train on
``data/phantom-quick``) gives a bank worth studying. Only radiographs with at least one annotated
femoral head are cases: a student stages heads.

A case's id is its data-set image id (as text), which is also the ``case_id`` the second-opinion
export writes for a case read from the bank (:mod:`avn.readers_format`). A missing or unreadable
folder never stops the gateway: the bank is then empty and says why, and the web app shows that.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from avn.dataset.format import Dataset, ImageRecord, load_dataset
from avn.dataset.images import Radiograph
from avn.pipeline.decode import DEFAULT_MAX_DECODE_BYTES, decode_payload
from avn.pipeline.errors import InvalidArgument, InvalidImage
from avn.pipeline.results import ImagePayload

logger = logging.getLogger(__name__)

PREFERRED_SPLIT = "E3"
ALL_RADIOGRAPHS = "all"
MIN_SPLIT_CASES = 10  # fewer E3 cases than this is no course of study: take the whole folder
# Decoded radiographs kept for window/level changes on the case being read (a full-size DICOM
# takes a few hundred ms to decode and ~30 MB as float32, so only the last few are kept).
DECODED_CASES_KEPT = 2


@dataclass(frozen=True)
class CaseHead:
    """One annotated femoral head: the truth the student is scored against."""

    side: str
    stage: str
    notes: tuple[str, ...]
    box: tuple[float, float, float, float]  # xyxy, image pixels


@dataclass(frozen=True)
class Case:
    """One radiograph of the bank."""

    id: str
    file_name: str
    subject_id: str
    view: str
    width: int
    height: int
    heads: tuple[CaseHead, ...]

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(head.side for head in self.heads)


class CaseBank:
    """The cases of one data-set folder, their files, and their decoded pixels on demand."""

    def __init__(self, folder: Path | None, cases: list[Case], split: str, problem: str = "") -> None:
        self.folder = folder
        self.split = split
        self.problem = problem  # why the bank is empty, in words for the web app
        self._cases = {case.id: case for case in cases}
        self._decoded: OrderedDict[str, Radiograph] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: Path | None) -> CaseBank:
        """The bank of ``folder``; never raises: an unusable folder gives an empty bank that says why."""
        if folder is None:
            return cls(None, [], ALL_RADIOGRAPHS, "no case bank is configured (AVN_CASE_BANK is empty)")
        try:
            dataset = load_dataset(folder)
        except FileNotFoundError:
            # Client-facing words name the folder, never its path on the server.
            problem = (
                f"no case bank in folder {folder.name!r}: it has no annotations.json "
                "(`make run` builds data/demo; see AVN_CASE_BANK)"
            )
            return cls(folder, [], ALL_RADIOGRAPHS, problem)
        except Exception as error:  # JSON or schema errors: report them, do not stop the gateway
            logger.warning("case bank %s cannot be read: %s", folder, error)
            return cls(
                folder, [], ALL_RADIOGRAPHS, f"case bank {folder.name!r} cannot be read (run `avn data check` on it)"
            )
        split, cases = select_cases(dataset)
        problem = "" if cases else f"the case bank {folder.name!r} has no radiograph with an annotated femoral head"
        logger.info("case bank %s: %d cases (%s)", folder, len(cases), split)
        return cls(folder, cases, split, problem)

    @property
    def available(self) -> bool:
        return bool(self._cases)

    @property
    def cases(self) -> list[Case]:
        return list(self._cases.values())

    def case(self, case_id: str) -> Case:
        if case_id not in self._cases:
            hint = "GET /v1/cases lists them" if self.available else self.problem
            raise InvalidArgument(f"unknown case {case_id!r}; {hint}")
        return self._cases[case_id]

    def file_bytes(self, case_id: str) -> bytes:
        """The case's image file as stored (DICOM, PNG or JPEG)."""
        case = self.case(case_id)
        assert self.folder is not None  # a bank with cases has a folder
        path = (self.folder / case.file_name).resolve()
        # The data-set checker refuses file names that leave the folder; a bank is read-only
        # input all the same, so make sure no case reads outside it.
        if not path.is_relative_to(self.folder.resolve()):
            raise InvalidImage(f"case {case_id}: file {case.file_name!r} lies outside the case bank")
        try:
            return path.read_bytes()
        except OSError as error:
            raise InvalidImage(f"case {case_id}: file {case.file_name} cannot be read ({error.strerror})") from error

    def radiograph(
        self, case_id: str, max_image_bytes: int, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    ) -> Radiograph:
        """The case's decoded pixels through the gateway's one decoder; the last few are kept."""
        with self._lock:
            if case_id in self._decoded:
                self._decoded.move_to_end(case_id)
                return self._decoded[case_id]
        radiograph = decode_payload(ImagePayload(self.file_bytes(case_id)), max_image_bytes, max_decode_bytes)
        with self._lock:
            self._decoded[case_id] = radiograph
            while len(self._decoded) > DECODED_CASES_KEPT:
                self._decoded.popitem(last=False)
        return radiograph


def select_cases(dataset: Dataset) -> tuple[str, list[Case]]:
    """(split used, cases): the E3 cases when there are enough of them, else every case of the folder."""
    split_cases = _cases_of(dataset.images_in_split(PREFERRED_SPLIT), dataset)
    if len(split_cases) >= MIN_SPLIT_CASES:
        return PREFERRED_SPLIT, split_cases
    return ALL_RADIOGRAPHS, _cases_of(dataset.images, dataset)


def _cases_of(images: list[ImageRecord], dataset: Dataset) -> list[Case]:
    cases = (_case(image, dataset) for image in sorted(images, key=lambda image: image.id))
    return [case for case in cases if case.heads]


def _case(image: ImageRecord, dataset: Dataset) -> Case:
    heads = tuple(
        CaseHead(side=a.side, stage=a.stage, notes=tuple(a.notes), box=a.xyxy)
        for a in sorted(dataset.annotations_of(image.id), key=lambda a: a.xyxy[0])  # left to right, as results
    )
    return Case(
        id=str(image.id),
        file_name=image.file_name,
        subject_id=image.subject_id,
        view=image.view,
        width=image.width,
        height=image.height,
        heads=heads,
    )
