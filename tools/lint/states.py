"""A state is an enum member, never a bare string (style.md: "a state is an enum member").

Each state machine has one ``StrEnum`` (:data:`MACHINES`), and each is carried by values of one
name: a message's ``state``, a mailbox's ``status``, an attempt's ``phase``, an error's ``kind`` ...
The lint fails on a string literal that is one of a machine's values where it meets that machine's
carrier:

- compared with it: ``row.state == "sent"``, ``error.kind in ("timeout", "unreachable")``,
  ``m.c.state.in_(["queued"])``, ``latest_error_kind(...) != "plan_limit"``;
- assigned to it: ``status = "error"``, ``values(state="sent")``, ``{"state": "sent"}``.

A carrier is a name, attribute, keyword, key or function whose last ``_``-separated word is the
machine's (``previous_status``, ``row["state"]``, ``sync_mode``). The enum classes themselves are
not checked. A literal that is rightly bare (a wire value of another system that happens to match)
says why, on its line::

    # state-string: the provider's own word, not our state
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from tools.lint.scope import Violation

# carrier word -> the enums whose values it carries ("module:Class")
MACHINES: dict[str, tuple[str, ...]] = {
    "state": (
        "leadline_send.states:MessageState",
        "leadline_quota.states:ReservationState",
        "leadline_quota.states:SlotState",
    ),
    "status": ("leadline_proto.events:MailboxStatus", "leadline_proto.requests:MailboxSlotStatus"),
    "slot": ("leadline_sync.mailbox.states:Slot",),
    "mode": ("leadline_sync.mailbox.states:SyncMode",),
    "phase": ("leadline_send.states:AttemptPhase",),
    "outcome": ("leadline_send.states:Reason", "leadline_sync.mailbox.schemas:MessageOutcome"),
    "kind": ("leadline_mail.net:ErrorKind",),
}
FOLDERS = ("mail", "gateway", "lead-service", "quota-service", "sync-service", "send-service")
EXEMPTION = re.compile(r"#\s*state-string:\s*(?P<why>.*)")


@dataclass(frozen=True)
class Machines:
    """Carrier word -> the state strings it may hold."""

    values: dict[str, frozenset[str]]

    @classmethod
    def load(cls) -> Machines:
        values: dict[str, frozenset[str]] = {}
        for carrier, enums in MACHINES.items():
            found: set[str] = set()
            for spec in enums:
                module, name = spec.split(":")
                enum: type[StrEnum] = getattr(importlib.import_module(module), name)
                found |= {member.value for member in enum}
            values[carrier] = frozenset(found)
        return cls(values)


def _carrier(node: ast.AST) -> str | None:
    """The carrier word of ``node``: ``row.state`` → state, ``latest_error_kind(...)`` → kind."""
    if isinstance(node, ast.Await):
        return _carrier(node.value)
    if isinstance(node, ast.Call):
        return _carrier(node.func)
    name: object = None
    if isinstance(node, ast.Attribute):
        name = node.attr
    elif isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        name = node.slice.value
    elif isinstance(node, ast.Constant):
        name = node.value
    return name.rsplit("_", 1)[-1] if isinstance(name, str) else None


def _literals(node: ast.AST | None) -> Iterator[ast.Constant]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            yield from _literals(element)
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)


def _given(node: ast.AST) -> Iterator[tuple[str | None, ast.AST]]:
    """(carrier, value) pairs of ``node``: what is compared with, assigned to or passed as a
    carrier."""
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        for operand in operands:
            carrier = _carrier(operand)
            if carrier in MACHINES:
                yield from ((carrier, other) for other in operands if other is not operand)
    elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        yield from ((_carrier(target), node.value) for target in targets)
    elif isinstance(node, ast.keyword) and node.arg:
        yield _carrier(ast.Name(node.arg)), node.value
    elif isinstance(node, ast.Dict):
        yield from (
            (_carrier(k), v) for k, v in zip(node.keys, node.values, strict=True) if k is not None
        )
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"in_", "not_in"}
    ):
        yield from ((_carrier(node.func.value), arg) for arg in node.args)


class _Checker:
    def __init__(self, source: str, path: str, machines: Machines) -> None:
        self.path = path
        self.tree = ast.parse(source, path)
        self.machines = machines
        self.comments = {
            token.start[0]: token.string
            for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT
        }

    def violations(self) -> list[Violation]:
        found: list[Violation] = []
        used: set[int] = set()
        for carrier, literal in self._meetings():
            if literal.value not in self.machines.values.get(carrier or "", frozenset()):
                continue
            exemption = EXEMPTION.match(self.comments.get(literal.lineno, ""))
            if exemption:
                used.add(literal.lineno)
                continue
            found.append(
                Violation(
                    self.path,
                    literal.lineno,
                    f"bare state string {literal.value!r} for a {carrier}: use its enum member "
                    f"({' / '.join(e.split(':')[1] for e in MACHINES[carrier or ''])})",
                )
            )
        for line, comment in self.comments.items():
            if EXEMPTION.match(comment) and line not in used:
                found.append(
                    Violation(
                        self.path,
                        line,
                        "'# state-string:' exemption with no state string on its line",
                    )
                )
        return sorted(set(found), key=lambda v: v.line)

    def _meetings(self) -> Iterator[tuple[str | None, ast.Constant]]:
        """Each (carrier, literal) pair where a literal is compared with or given to a carrier."""
        for node in self._outside_enums(self.tree):
            for carrier, value in _given(node):
                yield from ((carrier, literal) for literal in _literals(value))

    def _outside_enums(self, tree: ast.AST) -> Iterator[ast.AST]:
        """Every node but those inside a StrEnum class body (where the values are defined)."""
        stack = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id == "StrEnum" for base in node.bases
            ):
                continue
            yield node
            stack.extend(ast.iter_child_nodes(node))


def check_source(source: str, path: str, machines: Machines) -> list[Violation]:
    return _Checker(source, path, machines).violations()


def check_tree(root: Path) -> list[Violation]:
    machines = Machines.load()
    return [
        violation
        for folder in FOLDERS
        for path in sorted((root / folder / "src").rglob("*.py"))
        if "migrations" not in path.parts
        for violation in check_source(path.read_text(), str(path.relative_to(root)), machines)
    ]
