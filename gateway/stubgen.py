"""Generated-code folders that stay consistent under concurrency: shared by both stub generators.

A folder of generated stubs carries a stamp (the digest of what it was generated from). When the
stamp is stale, one process at a time (an exclusive file lock) builds a fresh folder beside it and
renames it into place, so concurrent importers (pytest-xdist workers, several gateway processes)
never see half a package.
"""

from __future__ import annotations

import fcntl
import importlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

STAMP_NAME = "SOURCE_SHA256"


def stamp_of(out: Path) -> str | None:
    stamp = out / STAMP_NAME
    return stamp.read_text().strip() if stamp.is_file() else None


def regenerate_if_stale(out: Path, digest: str, build: Callable[[Path], None]) -> Path:
    """Make ``out`` hold stubs for ``digest``; ``build(target)`` writes them into an empty folder."""
    if stamp_of(out) == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one generator at a time; the others find the stamp after
        if stamp_of(out) != digest:
            _build_and_swap(out, digest, build)
    return out


def _build_and_swap(out: Path, digest: str, build: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{out.name}-", dir=out.parent) as scratch:
        target = Path(scratch) / "stubs"
        target.mkdir()
        build(target)
        (target / STAMP_NAME).write_text(digest + "\n")
        stale = out.with_name(f"{out.name}.old")
        shutil.rmtree(stale, ignore_errors=True)
        if out.exists():
            out.rename(stale)
        target.rename(out)
        shutil.rmtree(stale, ignore_errors=True)
    importlib.invalidate_caches()
