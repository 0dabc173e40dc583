"""The first run: `resetbot demo` on a machine with no configuration, through the console script."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psutil


def test_demo_runs_a_real_bulk_reset_end_to_end(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "resetbot"
    started = time.monotonic()
    result = subprocess.run(
        [str(script), "demo"],
        # Nothing configured: no DATABASE_URL, REDIS_URL, SMTP or Slack settings, no .env.
        env={"PATH": str(script.parent), "HOME": str(tmp_path)},
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr
    # The bar as rich leaves it off a terminal: drawn once, in its final state.
    assert re.search(r"^Task #1 \S+ 46 of 46 users 100% [\d.,]+ users/s ", out, re.MULTILINE)
    assert "Task #1 completed in" in out
    assert "e-mailed                                 40" in out
    assert "Users to contact by hand: 6" in out
    assert "The local SMTP server captured 40 mails." in out
    assert "  | New password: ********" in out
    assert "verifies against the new hash in the database: yes" in out
    assert not re.search(r"New password: (?!\*{8}$)\S+$", out, re.MULTILINE)
    assert "What next" in out
    demo_dir = tmp_path / "resetbot-demo"
    assert (demo_dir / "demo.db").is_file() and (demo_dir / "sample-users.csv").is_file()
    # The embedded Redis stopped with the demo: no server left on its socket, no registry.
    assert not (demo_dir / ".resetbot" / "redis.db.settings").exists()
    socket_path = re.search(r"embedded Redis at unix://(\S+)", out)
    assert socket_path is not None
    leftovers = [
        process.info["pid"] for process in psutil.process_iter(["pid", "cmdline"])
        if socket_path.group(1) in " ".join(process.info["cmdline"] or [])
        and process.status() != psutil.STATUS_ZOMBIE
    ]
    assert leftovers == []
    print(f"\nresetbot demo took {took:.1f} s")
