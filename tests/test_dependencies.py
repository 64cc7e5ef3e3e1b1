"""Dependencies (issue #11): ``requirements.lock`` pins every dependency of ``pyproject.toml`` with
hashes (torch and torchvision at the builds on the project's machines), ``make install`` installs
from it refusing any other file, and ``make test`` audits it, failing on a known vulnerability that
has a fix (``scripts/audit_dependencies.py``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from audit_dependencies import verdict_of  # noqa: E402

AUDIT = ROOT / "scripts" / "audit_dependencies.py"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+) \\$")


def locked() -> dict[str, tuple[str, int]]:
    """name → (version, number of hashes) of every pin in requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_declared_dependency_is_locked_with_hashes_at_a_version_it_allows() -> None:
    pins = locked()
    assert pins and all(hashes >= 1 for _, hashes in pins.values()), "a pin without a hash"
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (requirement, pins[name][0])


def test_torch_stays_at_the_builds_on_the_machines_disks() -> None:
    pins = locked()
    assert pins["torch"][0] == "2.14.1" and pins["torchvision"][0] == "0.29.1"


def test_make_installs_from_the_lock_with_hashes_and_audits_before_the_tests() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --progress-bar on --require-hashes -r $(LOCK)" in makefile
    assert "pip install --no-deps -e '.[test]'" in makefile  # nothing unlocked comes in with the project
    assert re.search(r"^test: install audit$", makefile, re.MULTILINE)
    assert "scripts/audit_dependencies.py $(LOCK)" in makefile


def report(*dependencies: dict) -> dict:
    return {"dependencies": list(dependencies), "fixes": []}


FIXABLE = {"name": "jinja2", "version": "3.1.2", "vulns": [{"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"]}]}
UNFIXED = {"name": "ecdsa", "version": "0.19.0", "vulns": [{"id": "GHSA-wj6h-64fc-37mp", "fix_versions": []}]}
CLEAN = {"name": "numpy", "version": "2.4.6", "vulns": []}
LOCAL = {"name": "torch", "skip_reason": "Dependency not found on PyPI and could not be audited: torch (2.14.1)"}


def test_the_verdict_fails_on_a_fixable_vulnerability_only() -> None:
    verdict = verdict_of(report(FIXABLE, UNFIXED, CLEAN, LOCAL))
    assert verdict.failed and verdict.fixable == ["jinja2 3.1.2: GHSA-h5c8-rqwp-cp95 (fixed in 3.1.3)"]
    assert verdict.unfixed == ["ecdsa 0.19.0: GHSA-wj6h-64fc-37mp"] and verdict.unaudited == ["torch"]
    assert verdict.audited == 3
    assert not verdict_of(report(UNFIXED, CLEAN, LOCAL)).failed


@pytest.mark.parametrize(("dependencies", "code", "words"), [
    ((FIXABLE, CLEAN), 1, "VULNERABLE, a fix exists: jinja2 3.1.2: GHSA-h5c8-rqwp-cp95 (fixed in 3.1.3)"),
    ((UNFIXED, CLEAN, LOCAL), 0, "warning: vulnerable, no fix released yet: ecdsa"),
    ((LOCAL,), 0, "WARNING: no pin could be audited"),
])  # fmt: skip
def test_the_audit_command_exits_on_the_verdict(dependencies, code: int, words: str, tmp_path: Path) -> None:  # noqa: ANN001
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report(*dependencies)))
    result = subprocess.run([sys.executable, str(AUDIT), "--report", str(saved)], capture_output=True, text=True)
    assert result.returncode == code and words in result.stdout, result.stdout + result.stderr


def test_an_audit_that_cannot_run_says_so_and_fails(tmp_path: Path) -> None:
    """No vulnerability data (here: a lock pip-audit cannot parse) is exit 2, never a silent pass."""
    broken = tmp_path / "requirements.lock"
    broken.write_text("this is not a requirement ===\n")
    result = subprocess.run([sys.executable, str(AUDIT), str(broken)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "dependency audit NOT done" in result.stderr
