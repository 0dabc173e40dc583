"""The benchmark runs end to end at a tiny size, so it cannot rot between real runs.

Everything it starts is its own (a private redis-server, throw-away PostgreSQL databases, an SMTP
sink, the Slack stand-in, worker and app processes) and is gone afterwards.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.run import main
from bench.services import SmtpSink
from bench.synth import search_terms, synth_users
from core.settings import Settings
from jobs.mailer import Mailer, Outcome, PasswordMail, connect_smtp


def test_synthetic_directory_has_the_promised_mix() -> None:
    users = list(synth_users(2000))
    assert [u.id for u in users] == list(range(1, 2001))
    assert len({u.username for u in users}) == 2000
    without_email = sum(1 for u in users if not u.email) / len(users)
    staff = sum(1 for u in users if u.role) / len(users)
    assert 0.17 < without_email < 0.23
    assert 0.27 < staff < 0.33
    terms = search_terms(2000)
    assert len(terms) == 200
    assert {t.kind for t in terms} == {"rare", "common"}


def test_the_smtp_sink_counts_what_it_accepts_pipelined_or_not() -> None:
    """The bench's own bare SMTP server: one count per message accepted, whether the client
    pipelines (resetbot) or waits for each reply (smtplib), empty and dot-led messages too;
    commands out of order are refused and count nothing."""
    with SmtpSink() as sink:
        settings = Settings(smtp_host="127.0.0.1", smtp_port=sink.port, smtp_timeout=5,
                            mail_from="Library <resetbot@library.example>")
        mails = [PasswordMail("Ada", f"u{n}@example.org", f"u{n}", "Aa3#pw") for n in range(5)]
        with Mailer(settings, connect_smtp) as mailer:
            assert [d.outcome for d in mailer.send_each(mails)] == [Outcome.SENT] * 5
        with connect_smtp(settings) as client:
            assert client.has_extn("pipelining")
            assert client.rcpt("x@example.org")[0] == 503  # no MAIL yet
            assert client.sendmail("a@example.org", ["b@example.org"], b"") == {}
            assert client.sendmail("a@example.org", ["b@example.org"], b".hi\r\n.\r\n") == {}
            assert client.mail("a@example.org")[0] == 250
            assert client.docmd("DATA")[0] == 503  # no recipient
        assert sink.messages == 7
        assert sink.last_accepted is not None
        sink.reset()
        assert sink.messages == 0


@pytest.mark.slow
@pytest.mark.postgres
def test_the_benchmark_runs_end_to_end_at_a_tiny_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert main([
        "--sizes", "60,300", "--throughput-max", "60", "--workers", "1", "--repeat", "1",
        "--rounds", "1000", "--bcrypt-users", "0", "--slack-size", "0",
        "--phases", "throughput,large", "--large-dbs", "postgresql", "--floor-samples", "10",
        "--queries", "20", "--preview-rounds", "1", "--out", str(out),
    ]) == 0
    printed = capsys.readouterr().out
    assert "Targets" in printed
    result = json.loads(out.read_text())

    # Both modes ran as whole tasks through the workers, timed against a measured floor.
    runs = result["throughput"]
    assert {r["mode"] for r in runs} == {"default", "generated"}
    for run in runs:
        assert run["status"] == "completed"
        assert sum(run["counts"].values()) == 60
        assert run["hash_median_s"] > 0 and math.isfinite(run["ratio"]) and run["ratio"] > 0
    generated = next(r for r in runs if r["mode"] == "generated")
    assert generated["mails"] == generated["counts"].get("notified")
    # The task centre talked to the Slack stand-in.
    assert all(r["slack_total"] > 0 for r in runs)

    # Search and preview latency, through the app and through core; a 300-user task with the
    # memory of its worker and of the app sampled.
    assert {r["via"] for r in result["latency"]} == {"core", "http"}
    for row in result["latency"]:
        assert row["search"]["n"] == 20 and row["search"]["p99_ms"] > 0
        assert row["preview"]["n"] == 4
    (memory,) = result["memory"]
    assert memory["size"] == 300
    assert memory["peak_rss_mb"]["worker"] > 10 and memory["peak_rss_mb"]["app"] > 10
    assert [r["via"] for r in result["confirm"]] == ["http"]
    assert result["targets"]


@pytest.mark.slow
@pytest.mark.postgres
def test_the_small_task_and_eta_phases_run_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main([
        "--phases", "small,eta", "--small-repeat", "2", "--eta-users", "200",
        "--rounds", "1000", "--modes", "default", "--out", str(out),
    ]) == 0
    result = json.loads(out.read_text())
    small = result["small"]
    assert len(small) == 2
    for row in small:
        assert row["status"] == "completed"
        # Confirm sent, task started, mail accepted: in that order, all measured.
        assert 0 < row["started_s"] < row["seconds"] <= row["finished_s"]
        assert row["slack_calls_before_mail"] == 0  # the mail waited for no Slack call
    assert result["small_median_s"] > 0
    (eta,) = result["eta"]
    assert eta["status"] == "completed" and eta["mode"] == "default"


def test_picker_terms_cover_what_people_type() -> None:
    from bench.koha import picker_terms, synth_borrowers

    terms = picker_terms(500, total=50)
    assert len(terms) == 50
    assert {t.kind for t in terms} == {"name", "username", "card", "email", "miss"}
    borrowers = list(synth_borrowers(500))
    assert any(b.userid is None for b in borrowers) and any(b.flags for b in borrowers)
    texts = [f"{b.userid} {b.firstname} {b.surname} {b.cardnumber} {b.email}".lower()
             for b in borrowers]
    for term in terms:
        hits = sum(term.term.lower() in text for text in texts)
        assert (hits == 0) == (term.kind == "miss"), term


@pytest.mark.slow
@pytest.mark.postgres
def test_the_picker_phase_runs_on_every_database_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main([
        "--phases", "picker", "--sizes", "300", "--throughput-max", "60", "--queries", "20",
        "--out", str(out),
    ]) == 0
    result = json.loads(out.read_text())
    rows = {(r["db"], r["via"]): r["search"] for r in result["picker"]}
    assert set(rows) == {
        *((db, via) for db in ("postgresql", "sqlite")
          for via in ("sql (trigram index)", "sql (trigram index), cpu time")),
        # no index on MariaDB: resetbot's own table is searched through the copy there
        ("mariadb", "sql (plain LIKE, no index)"), ("mariadb", "search copy"),
        ("mariadb", "search copy, cpu time"),
        *((db, via) for db in ("mariadb", "postgresql", "sqlite")
          for via in ("copy", "copy, cpu time", "copy during reload", "copy reload, 20ms apart",
                      "direct sql")),
    }
    for (db, via), search in rows.items():
        assert search["p99_ms"] > 0, (db, via)
        assert search["n"] == (10 if via in ("direct sql", "sql (plain LIKE, no index)")
                               else 20) or "reload" in via
    assert [c["db"] for c in result["search_copy"]] == ["mariadb", "postgresql", "sqlite"]
    for copy in result["search_copy"]:
        assert copy["rows"] == 300 and copy["build_s"] > 0 and copy["reload_s"] > 0
        assert 0 < copy["memory_mb"] <= copy["memory_peak_mb"]
    assert any(t["name"].startswith("options search p99") for t in result["targets"])


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.mariadb
def test_the_koha_phase_runs_whole_tasks_on_mariadb_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main([
        "--phases", "koha", "--koha-users", "40", "--koha-preview-users", "200",
        "--workers", "1", "--repeat", "1", "--floor-samples", "5", "--preview-rounds", "1",
        "--out", str(out),
    ]) == 0
    result = json.loads(out.read_text())
    runs = result["koha"]
    assert {(r["mode"], r["directory"]) for r in runs} == {
        ("default", "koha/mariadb"), ("generated", "koha/mariadb")
    }
    for run in runs:
        assert run["status"] == "completed" and sum(run["counts"].values()) == 40
        assert run["scheme"] == "bcrypt" and run["rounds"] == 8
        assert run["hashes"] == 40  # the floor comes from the workers' own hash() calls
        assert run["hash_median_s"] > 0 and math.isfinite(run["ratio"]) and run["ratio"] > 0
    generated = next(r for r in runs if r["mode"] == "generated")
    assert generated["mails"] == generated["counts"].get("notified") > 0
    assert [r["size"] for r in result["koha_summary"]] == [40, 40]
    assert all(r["cpu_ratio"] >= 1 for r in result["koha_summary"])
    # Beside the ratios, the machine's own speed hashing Koha's bcrypt in 1 process at once.
    assert [(r["scheme"], r["processes"]) for r in result["hash_scaling"]] == [("bcrypt/8", 1)]
    previews = {row["via"]: row for row in result["koha_preview"]}
    assert set(previews) == {"core, counted by the table", "core, as the app (search copy)"}
    for preview in previews.values():
        assert preview["size"] == 200 and preview["preview"]["max_ms"] > 0
        assert preview["app_cpu"]["n"] == preview["preview"]["n"] > 0
    assert any(t["name"].startswith("40-user task on Koha") for t in result["targets"])
