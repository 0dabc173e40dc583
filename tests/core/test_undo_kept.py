"""An opened Undo snapshot holds password hashes: its repr never shows them."""

from __future__ import annotations

from core.undo import Kept

PREVIOUS_HASH = "$2b$04$previouspreviouspreviou.previouspreviouspreviousprev"
WRITTEN_HASH = "$2b$04$writtenwrittenwrittenwri.writtenwrittenwrittenwrittenw"


def test_an_opened_snapshot_shows_its_user_but_never_its_hashes() -> None:
    kept = Kept(7, {"password_hash": PREVIOUS_HASH, "must_change_password": False}, WRITTEN_HASH)
    shown = repr(kept)
    assert "user_id=7" in shown
    assert PREVIOUS_HASH not in shown and WRITTEN_HASH not in shown
    assert "previous" not in shown and "written" not in shown
