"""CI runs every directory's tests: where a server cannot run (Samba AD needs root), a test
fails under CI instead of skipping (tests/core/test_active_directory_samba.py `_samba_available`),
and `.ci/run` says it is CI itself, not only when its runner happens to set `CI`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CI_RUN = REPO / ".ci/run"


def test_ci_run_sets_ci_before_the_tests_run() -> None:
    """The lines `.ci/run` runs before pytest, sourced by bash with `CI` unset: `CI` is set."""
    lines = CI_RUN.read_text("utf-8").splitlines()
    exports = "\n".join(line for line in lines if line.startswith("export "))
    shown = subprocess.run(
        ["bash", "-c", exports + '\nprintf %s "${CI:-}"'], capture_output=True, text=True,
        check=True, env={k: v for k, v in os.environ.items() if k != "CI"},
    )
    assert shown.stdout == "true"
    last_export = max(i for i, line in enumerate(lines) if line.startswith("export CI="))
    assert last_export < lines.index(".venv/bin/python -m pytest -n auto")
