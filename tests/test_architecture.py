"""The layout shows the architecture: one module per pipeline step, imports going one way.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``lint-imports`` checks them
on the real import graph, including imports inside functions.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_STEPS = ("decode", "detect", "crop", "classify", "fuse", "render", "results")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(executable)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_import_of_the_gateway_from_avn_breaks_the_contract(tmp_path: Path) -> None:
    """The check can fail: a copy of the packages where a pipeline step imports the gateway."""
    for package in ("avn", "gateway"):
        subprocess.run(["cp", "-r", str(ROOT / package), str(tmp_path / package)], check=True)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    fuse = tmp_path / "avn" / "pipeline" / "fuse.py"
    fuse.write_text(fuse.read_text() + "\nfrom gateway.settings import Settings  # noqa\n")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "avn.pipeline.fuse -> gateway.settings" in result.stdout


@pytest.mark.parametrize("step", PIPELINE_STEPS)
def test_each_pipeline_step_is_a_module_of_avn_pipeline(step: str) -> None:
    module = importlib.import_module(f"avn.pipeline.{step}")
    assert module.__doc__ and len(module.__doc__.strip()) > 40  # says its role
