"""Generated passwords come from the OS's CSPRNG: two processes never mail the same sequence,
and nothing seeded (Python's `random`) decides them.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from core.passwords import generate_password
from core.settings import PasswordPolicy

REPO = Path(__file__).resolve().parents[2]
PER_PROCESS = 20
GENERATE = (
    "import json, sys\n"
    "from core.passwords import generate_password\n"
    "from core.settings import PasswordPolicy\n"
    f"print(json.dumps([generate_password(PasswordPolicy()) for _ in range({PER_PROCESS})]))\n"
)


def test_two_processes_started_alike_generate_different_passwords() -> None:
    # The same interpreter, code, environment and hash seed, started together: only a
    # generator drawing from the OS (not a seeded one) tells them apart.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    processes = [subprocess.Popen([sys.executable, "-c", GENERATE], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE) for _ in range(2)]
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        outputs.append(json.loads(out))
    first, second = outputs
    assert len(set(first)) == len(set(second)) == PER_PROCESS
    assert not set(first) & set(second)


def test_seeding_python_s_random_does_not_decide_the_passwords() -> None:
    policy = PasswordPolicy()
    state = random.getstate()
    try:
        random.seed(1234)
        first = [generate_password(policy) for _ in range(5)]
        random.seed(1234)
        again = [generate_password(policy) for _ in range(5)]
    finally:
        random.setstate(state)
    assert not set(first) & set(again)
