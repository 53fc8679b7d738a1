"""A replica's capacity comes from the machine (open files, memory budget); bad settings are refused at start."""

from __future__ import annotations

import resource

import pytest
from pydantic import ValidationError

from leadline_sync.config import Settings
from leadline_sync.sync.capacity import CapacityError, raise_open_files_limit, replica_capacity


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LEADLINE_SYNC_MEMORY_BUDGET_MB": "0"},
            "LEADLINE_SYNC_MEMORY_BUDGET_MB=0 is less than one mailbox needs (200 KiB",
        ),
        (
            {"LEADLINE_SYNC_MEMORY_BUDGET_MB": "1", "LEADLINE_SYNC_MAILBOX_MEMORY_KIB": "2048"},
            "LEADLINE_SYNC_MEMORY_BUDGET_MB=1 is less than one mailbox needs (2048 KiB",
        ),
        (
            {"LEADLINE_SYNC_ROTATION_SECONDS": "0"},
            "LEADLINE_SYNC_ROTATION_SECONDS=0 must be more than 0",
        ),
        (
            {"LEADLINE_SYNC_ROTATION_SECONDS": "-60"},
            "LEADLINE_SYNC_ROTATION_SECONDS=-60 must be more than 0",
        ),
        ({"LEADLINE_SYNC_ROTATION_SECONDS": "30"}, "is shorter than LEADLINE_SYNC_POLL_SECONDS=60"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        Settings()


def test_capacity_from_open_files_and_memory() -> None:
    defaults = Settings()
    assert defaults.sync_max_mailboxes is None and defaults.sync_rotation_seconds == 900
    # this machine kind: a hard limit of 20,000 open files, the default 1 GiB budget at 200 KiB a mailbox
    by_memory = replica_capacity(defaults, 20_000)
    assert (by_memory.mailboxes, by_memory.by_open_files, by_memory.by_memory) == (5242, 9872, 5242)
    assert (by_memory.live, by_memory.rotation_slots) == (5238, 4)
    by_files = replica_capacity(Settings(sync_memory_budget_mb=8192), 20_000)
    assert by_files.mailboxes == 9872
    assert replica_capacity(Settings(sync_memory_budget_mb=8192), 1024).mailboxes == 384
    capped = replica_capacity(Settings(sync_max_mailboxes=3), 20_000)
    assert (capped.mailboxes, capped.live, capped.rotation_slots) == (3, 2, 1)
    single = replica_capacity(Settings(sync_max_mailboxes=1), 20_000)
    assert (single.live, single.rotation_slots) == (0, 1), (
        "one slot still serves every mailbox in turns"
    )
    with pytest.raises(CapacityError, match="may open only 257 files"):
        replica_capacity(defaults, 257)


def test_soft_open_files_limit_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    try:
        raised = raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        if hard != resource.RLIM_INFINITY:
            assert raised == hard
    finally:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), hard)
        )
