"""deploy/systemd/: the app's unit and the workers' template unit pass `systemd-analyze verify`
(no warning either), are hardened (`systemd-analyze security` rates them), and run what the
docs/deployment.md says.

systemd need not be running (CI runs in a container): the units are verified under a root folder
of the test's own, holding the host's shipped units (the targets they name), the units under
test, and an executable at ExecStart's path, which `verify` checks exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from core.settings import settings_help

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "deploy" / "systemd"
APP, WORKER = "resetbot.service", "resetbot-worker@.service"
INSTANCES = ["resetbot.service", "resetbot-worker@1.service", "resetbot-worker@2.service"]
EXECUTABLE = "/opt/resetbot/venv/bin/resetbot"
HOST_UNITS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]
#: `systemd-analyze security` rates exposure from 0 (best) to 10; 2.0 is well inside its "OK".
EXPOSURE_THRESHOLD = 20  # in tenths, as --threshold takes it

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian's `systemd` package; .ci/run installs it)",
)


def directives(unit: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, by key, in order (a key may be given more than once)."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A folder laid out like a host with resetbot installed, for `--root`."""
    host_units = next((path for path in HOST_UNITS if (path / "sysinit.target").exists()), None)
    if host_units is None:
        pytest.skip("no systemd units shipped on this host (sysinit.target)")
    shutil.copytree(host_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    executable = tmp_path / EXECUTABLE.lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    for unit in (APP, WORKER):
        shutil.copy(UNITS / unit, tmp_path / "etc/systemd/system" / unit)
    return tmp_path


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args, f"--root={root}", *INSTANCES],
        capture_output=True, text=True, timeout=60, check=False,
    )


@needs_systemd_analyze
def test_the_units_verify_without_a_warning(root: Path) -> None:
    verified = analyze(root, "verify", "--man=no")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout + verified.stderr == ""


@needs_systemd_analyze
def test_verify_would_catch_a_mistake(root: Path) -> None:
    unit = root / "etc/systemd/system" / APP
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    (root / EXECUTABLE.lstrip("/")).unlink()
    verified = analyze(root, "verify", "--man=no")
    output = verified.stdout + verified.stderr
    assert "Unknown key 'ProtectSystm'" in output
    assert f"Command {EXECUTABLE} is not executable" in output
    assert verified.returncode != 0


@needs_systemd_analyze
def test_the_units_are_hardened(root: Path) -> None:
    rated = analyze(root, "security", "--offline=true", f"--threshold={EXPOSURE_THRESHOLD}",
                    "--no-pager")
    levels = re.findall(r"Overall exposure level for (\S+): ([\d.]+)", rated.stdout)
    assert [unit for unit, _ in levels] == INSTANCES, rated.stdout + rated.stderr
    assert rated.returncode == 0, levels
    assert all(float(level) <= EXPOSURE_THRESHOLD / 10 for _, level in levels)


@pytest.mark.parametrize(("unit", "command"), [(APP, "serve"), (WORKER, "worker")])
def test_each_unit_runs_its_command_with_the_settings_file(unit: str, command: str) -> None:
    found = directives(unit)
    assert found["ExecStart"][0].split()[:2] == [EXECUTABLE, command]
    assert found["EnvironmentFile"] == ["/etc/resetbot/resetbot.env"]
    assert found["Restart"] == ["on-failure"]
    assert found["StateDirectory"] == ["resetbot"]
    assert found["WorkingDirectory"] == ["/var/lib/resetbot"]
    # The same (dynamic) user for the app and the workers: they share the state folder.
    assert found["DynamicUser"] == ["yes"] and found["User"] == ["resetbot"]
    for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("PrivateDevices", "yes"), ("CapabilityBoundingSet", "")]:
        assert found[key] == [value], key
    assert "@system-service" in found["SystemCallFilter"]
    assert set(found["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_the_example_settings_file_names_only_settings_and_a_shared_redis() -> None:
    names = [line.partition("=")[0]
             for line in (UNITS / "resetbot.env.example").read_text().splitlines()
             if line and not line.startswith("#")]
    assert set(names) <= {name for name, _, _ in settings_help()}
    assert "REDIS_URL" in names  # each unit's private /tmp: no shared embedded Redis
