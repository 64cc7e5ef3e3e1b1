"""Audit ``requirements.lock`` for known vulnerabilities (``make test`` runs this).

``pip-audit`` checks every pinned version against the vulnerability data of PyPI (the
Python Packaging Advisory Database, through PyPI's JSON API) without installing anything. The
verdict:

* a vulnerability with a fixed release → failure (exit 1): upgrade the pin (``make lock``) or, if
  the fix cannot be taken, say why in ``IGNORED`` below;
* a vulnerability without a fix yet → a warning (nothing to upgrade to);
* a pin the service does not know (a build from a local index, or a mirror without per-release
  data) → listed as not audited;
* the service unreachable → exit 2 with the reason: an audit that did not happen must not look like
  one that passed (``make test AUDIT=no`` skips it knowingly).

``--report FILE`` judges a saved ``pip-audit --format json`` report instead of running it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# Vulnerability ids accepted knowingly, each with the reason. Empty: none.
IGNORED: dict[str, str] = {}
EXIT_VULNERABLE, EXIT_UNAVAILABLE = 1, 2


@dataclass
class Verdict:
    fixable: list[str] = field(default_factory=list)  # "name version: id (fixed in …)"
    unfixed: list[str] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)
    audited: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.fixable)


def verdict_of(report: dict) -> Verdict:
    """Sort a pip-audit JSON report into what fails the build, what warns, and what was not checked."""
    verdict = Verdict()
    for dependency in report.get("dependencies", []):
        name, version = dependency["name"], dependency.get("version", "?")
        if "skip_reason" in dependency:
            verdict.unaudited.append(name)
            continue
        verdict.audited += 1
        for vulnerability in dependency.get("vulns", []):
            identifier = vulnerability["id"]
            if identifier in IGNORED:
                continue
            fixes = vulnerability.get("fix_versions") or []
            line = f"{name} {version}: {identifier}" + (f" (fixed in {', '.join(fixes)})" if fixes else "")
            (verdict.fixable if fixes else verdict.unfixed).append(line)
    return verdict


class AuditUnavailable(RuntimeError):
    """pip-audit could not run or reach the vulnerability service."""


def run_pip_audit(lock: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="avn-audit-") as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "pip_audit",
            "--requirement", str(lock),
            "--require-hashes", "--disable-pip",  # audit the pins as they are: nothing is installed
            "--format", "json", "--output", str(report),
            "--progress-spinner", "off",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if not report.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise AuditUnavailable(f"pip-audit did not finish (exit {result.returncode}): {last}")
        return json.loads(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path, nargs="?", default=LOCK)
    parser.add_argument("--report", type=Path, help="judge this pip-audit JSON report instead of running pip-audit")
    arguments = parser.parse_args()
    try:
        report = json.loads(arguments.report.read_text()) if arguments.report else run_pip_audit(arguments.lock)
    except AuditUnavailable as error:
        print(f"dependency audit NOT done: {error}; `make test AUDIT=no` skips it knowingly", file=sys.stderr)
        return EXIT_UNAVAILABLE
    verdict = verdict_of(report)
    for line in verdict.fixable:
        print(f"VULNERABLE, a fix exists: {line}")
    for line in verdict.unfixed:
        print(f"warning: vulnerable, no fix released yet: {line}")
    if verdict.unaudited:
        names = ", ".join(sorted(verdict.unaudited))
        print(f"not audited (unknown to the vulnerability service): {len(verdict.unaudited)}: {names}")
    print(
        f"dependency audit: {verdict.audited} pins audited, {len(verdict.fixable)} fixable and "
        f"{len(verdict.unfixed)} unfixed vulnerabilities, {len(verdict.unaudited)} not audited"
    )
    if verdict.unaudited and not verdict.audited:
        print("WARNING: no pin could be audited (the vulnerability service knows none of them here)")
    return EXIT_VULNERABLE if verdict.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
