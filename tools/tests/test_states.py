"""The state-string lint finds a bare state where it meets its carrier, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.lint.states import Machines, check_source, check_tree

ROOT = Path(__file__).resolve().parents[2]
PATH = "send-service/src/leadline_send/planted.py"


@pytest.fixture(scope="module")
def machines() -> Machines:
    return Machines.load()


def test_each_machine_carries_its_enum_values(machines: Machines) -> None:
    assert {"queued", "sent", "reserved", "granted"} <= machines.values["state"]
    assert {"enabled", "connection_failed"} <= machines.values["status"]
    assert "plan_limit" in machines.values["kind"]


@pytest.mark.parametrize(
    "source",
    [
        "if row.state == 'sent': pass",
        "if 'queued' != message.state: pass",
        "if error.kind in ('timeout', 'unreachable'): pass",
        "q = m.c.state.in_(['queued', 'deferred'])",
        "if await latest_error_kind(session, row.id) == 'plan_limit': pass",
        "status = 'error'",
        "row.previous_status = 'enabled' if up else 'disabled'",
        "q = update(m).values(state='sent')",
        "event = {'status': 'pending'}",
        "if row['phase'] == 'data': pass",
        "if mailbox.slot != 'granted': pass",
    ],
)
def test_a_bare_state_string_fails(machines: Machines, source: str) -> None:
    found = check_source(source + "\n", PATH, machines)
    assert found, source
    assert all(v.line == 1 and "bare state string" in v.message for v in found)


@pytest.mark.parametrize(
    "source",
    [
        "if row.state == MessageState.SENT: pass",
        "if folder.role == 'sent': pass",  # a folder, not a message state
        "outcome = 'failed'",  # a metric label: no Reason is called that
        "if kind == 'mailbox': pass",  # an account key's kind, not an error kind
        "x = {'reason': 'complained'}",
        "class MessageState(StrEnum):\n    SENT = 'sent'\n    QUEUED = 'queued'",
        "if reply.status == 'pending': pass  # state-string: the provider's own word, not our state",
    ],
)
def test_what_is_no_bare_state_passes(machines: Machines, source: str) -> None:
    assert check_source(source + "\n", PATH, machines) == []


def test_an_exemption_on_a_line_with_no_state_fails(machines: Machines) -> None:
    found = check_source("x = 1  # state-string: nothing here any more\n", PATH, machines)
    assert [v.line for v in found] == [1]


def test_the_tree_is_clean() -> None:
    assert [str(v) for v in check_tree(ROOT)] == []
