"""Style is checked, not hoped for: ruff with the rule set of pyproject.toml, and Snakemake's own linter on the
workflow (run in a scratch directory: parsing the workflow may write there)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.pipeline
def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.pipeline
def test_snakemake_lint_finds_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile"), "-d",
                           str(tmp_path), "--configfile", str(REPO / "config" / "config.yaml")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "your workflow is in a good condition" in done.stdout + done.stderr, (
        done.stdout + done.stderr)
