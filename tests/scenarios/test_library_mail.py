"""A whole e-mailed task in the library's own words: its template folder, its language."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.directory import Directory
from core.models import Scope, TaskStatus
from core.passwords import PasswordHasher
from core.settings import Settings
from tests.support.engine import build_context, run_until_final, submit, user_rows
from tests.support.smtp import SmtpServer
from tests.support.smtp import smtp_server as smtp_server

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

TEMPLATE = """Subject: {library_name}: nouveau mot de passe
Library-Name: Médiathèque
Must-Change: Changez-le à la première connexion.

Bonjour {name},
Identifiant : {username}
Mot de passe : {password}
{must_change}
Aide : {helpdesk}
"""
PASSWORD = re.compile(r"^Mot de passe : (\S+)\r?$", re.MULTILINE)


@sqlite_only
def test_users_get_the_librarys_own_mail_and_its_password_works(
    settings: Settings, redis_conn: Redis, engine: Engine, sessions: sessionmaker[Session],
    directory: Directory, sample_users: list[object],
    smtp_server: SmtpServer, tmp_path: Path,
) -> None:
    (tmp_path / "reset.txt").write_text("Subject: Reset\n\n{password}\n", encoding="utf-8")
    (tmp_path / "reset.fr.txt").write_text(TEMPLATE, encoding="utf-8")
    library = replace(smtp_server.settings(settings), mail_templates=str(tmp_path),
                      mail_language="fr", helpdesk="01 23 45 67 89")
    context = build_context(library, redis_conn, engine)

    final = run_until_final(context, submit(context, Scope.SELECTED_ONLY, (1, 3)))

    assert final.status is TaskStatus.COMPLETED
    rows = user_rows(sessions, directory)
    hasher = PasswordHasher.from_settings(settings)
    for user_id, address in ((1, "alice@example.org"), (3, "carol@example.org")):
        [mail] = smtp_server.to(address)
        assert mail.message["Subject"] == "Médiathèque: nouveau mot de passe"
        assert mail.message.get_content_type() == "text/plain"  # no reset.fr.html: text only
        assert "Changez-le à la première connexion." in mail.text
        assert "Aide : 01 23 45 67 89" in mail.text
        found = PASSWORD.search(mail.text)
        assert found is not None
        assert hasher.verify(found.group(1), rows[user_id].password_hash or "")
