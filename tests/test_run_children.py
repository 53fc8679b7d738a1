"""`make run` (deploy/run.py) notices a service that exits on its own instead of running on without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy.run import first_exit


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_service_that_exits_on_its_own_is_named_with_its_exit_code() -> None:
    children = {"lead": child("import time; time.sleep(60)"), "sync": child("raise SystemExit(3)")}
    try:
        assert first_exit(children, set(), poll_seconds=0.05) == ("sync", 3)
        assert children["lead"].poll() is None, "the others are the caller's to stop"
    finally:
        children["lead"].kill()
        children["lead"].wait()


def test_a_replaceable_service_is_reaped_and_reported_and_the_others_still_watched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sync = child("pass")
    # "lead" exits once "sync" is reaped: a second's sleep is no order on a loaded machine, where two starts of
    # Python can lie further apart
    lead = child(
        f"import os, time\nwhile os.path.exists('/proc/{sync.pid}'): time.sleep(0.01)\nraise SystemExit(4)"
    )
    children = {"sync": sync, "lead": lead}
    assert first_exit(children, {"sync"}, poll_seconds=0.05) == ("lead", 4)
    assert children["sync"].returncode == 0, "reaped, not left a zombie"
    assert "sync exited (code 0)" in capsys.readouterr().out
