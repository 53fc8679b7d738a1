"""Every kind of mailbox error has a fix in the user's words, and a fix is kept only for a kind that exists."""

from __future__ import annotations

from leadline_mail.net import ErrorKind
from leadline_sync.mailbox.fixes import FIXES, fix_for


def test_every_error_kind_has_its_fix() -> None:
    assert set(FIXES) == set(ErrorKind)
    assert all(fix_for(kind, "gmail") and "{" not in fix_for(kind, "gmail") for kind in ErrorKind)
    assert "Google" in fix_for(ErrorKind.OAUTH_REVOKED, "gmail")
