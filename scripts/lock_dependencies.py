"""Compile ``requirements.lock``: every dependency of ``pyproject.toml`` (with the ``test`` extra)
pinned to one version, each with the SHA-256 hashes of its files (``make lock``).

``make install`` installs from it with ``pip install --require-hashes``: a file that is not the
one locked — a release replaced on an index, a tampered mirror — stops the install. torch and
torchvision stay at the builds the project's machines hold on disk (``torch==2.14.1``,
``torchvision==0.29.1`` in pyproject.toml), whose hashes are those files'.

uv does the compiling (``uv pip compile --generate-hashes``) and sees the indexes pip is configured
with (``pip config``: extra index URLs, find-links, constraints), choosing the highest version any
of them offers, as pip does — so the lock pins what ``pip install`` would have installed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYTHON_VERSION = "3.11"


def pip_setting(name: str) -> list[str]:
    """The values of one of pip's list settings (``global.extra-index-url``…), from its config and environment."""
    result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    values: list[str] = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] == name:
            values += shlex.split(value.strip().strip("'\""))
    return list(dict.fromkeys(values))


def uv_command(out: Path) -> list[str]:
    command = [
        sys.executable, "-m", "uv", "pip", "compile", str(ROOT / "pyproject.toml"),
        "--extra", "test",
        "--generate-hashes",
        "--python-version", PYTHON_VERSION,
        "--index-strategy", "unsafe-best-match",  # pip's rule: the highest version of any index
        "--custom-compile-command", "make lock",
        "--output-file", str(out),
    ]  # fmt: skip
    for url in pip_setting("index-url"):
        command += ["--index-url", url]
    for url in pip_setting("extra-index-url"):
        command += ["--extra-index-url", url]
    for location in pip_setting("find-links"):
        command += ["--find-links", location]
    for constraints in pip_setting("constraint"):
        command += ["--constraint", constraints]
    return command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=LOCK)
    arguments = parser.parse_args()
    return subprocess.run(uv_command(arguments.out), cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
