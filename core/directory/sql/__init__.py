"""The SQL table directories (resetbot's own table, Koha's `borrowers`, a described table)
behind the Directory protocol (core/directory/protocol.py).

- `table.Directory`: one users table read and written as its profile says (`profile.py`,
  shipped profiles in `profiles/`), with Koha's extras beside it (`koha_rules.py`, Koha's password
  rules; `koha_log.py`, its `action_logs` entry) and the hash survey (`survey.py`).
- `directory.SqlDirectory`: that table behind the protocol, ids as text.
"""

from core.directory.sql.directory import SqlDirectory, as_protocol, sql_id, sql_ids

__all__ = ["SqlDirectory", "as_protocol", "sql_id", "sql_ids"]
