"""Every query on a tenant table filters on ``company_id`` (CONTRIBUTING: "tenant scoping on every
query").

A *tenant table* is a table of a service's ``models.py`` with a ``company_id`` column. A *query* is
a SQLAlchemy ``select(...)``, ``update(t)``, ``delete(t)``, ``t.select()``, ``t.update()``,
``t.delete()`` or a ``text("...")`` statement, with the chain of methods called on it
(``.where(...)``, ``.join(...)``). A query that touches a tenant table is *scoped* when a ``where``,
``filter``, ``having`` or ``join`` of it names ``company_id`` (a column, a variable or an attribute
of that name, directly or through a local variable it uses), or when it is nested inside a scoped
query (a subquery correlated to scoped rows). Inserts write ``company_id`` and are not checked.

A query that is rightly unscoped says why, on one of its lines or the line above it::

    # unscoped: the mailbox id came from a row the caller's company owns

An ``# unscoped:`` comment with no query under it is reported too, so exemptions do not outlive
their code. Plain SQL for asyncpg counts too: a string that starts with ``SELECT``, ``WITH``,
``UPDATE``, ``DELETE`` or ``INSERT`` is a query on the tenant tables it names after FROM, JOIN,
UPDATE or USING, scoped when ``company_id`` is compared after its first WHERE or ON.

What the lint cannot see: a query whose table is a function parameter is reported, since it cannot
tell; a plain-SQL statement assembled from fragments that do not start as a statement is not seen.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Table

SERVICES = {
    "gateway": "leadline_gateway",
    "lead-service": "leadline_lead",
    "quota-service": "leadline_quota",
    "sync-service": "leadline_sync",
    "send-service": "leadline_send",
}
SCOPE = "company_id"
EXEMPTION = re.compile(r"#\s*unscoped:\s*(?P<why>.*)")
_CONSTRUCTORS = {"select", "update", "delete"}
_FILTERS = {"where", "filter", "filter_by", "having", "join", "outerjoin"}
_SQL_TABLE = re.compile(r"\b(?:FROM|JOIN|UPDATE|USING)\s+(?:\w+\.)?(\w+)", re.IGNORECASE)
_SQL_FILTER = re.compile(r"\b(?:WHERE|ON)\b", re.IGNORECASE)
# company_id compared (``company_id = $1``, ``= t.company_id``, ``company_id IN``), not only
# selected
_SQL_SCOPED = re.compile(r"\bcompany_id\s*(?:=|IN\b)|=\s*(?:\w+\.)?company_id\b", re.IGNORECASE)
# plain SQL (asyncpg's fetch/execute): a string that starts as a statement, in capitals as the house
# writes it
RAW_SQL = re.compile(r"^\s*(?:SELECT|WITH|UPDATE|DELETE|INSERT)\s")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class TenantTables:
    """Per models module (``leadline_sync.models``), its variables that hold a tenant table → SQL
    name."""

    by_module: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def of_services(cls) -> TenantTables:
        found = cls()
        for package in SERVICES.values():
            module = importlib.import_module(f"{package}.models")
            found.by_module[module.__name__] = {
                name: value.name
                for name, value in vars(module).items()
                if isinstance(value, Table) and SCOPE in value.c
            }
        return found

    def sql_names(self) -> set[str]:
        return {table for tables in self.by_module.values() for table in tables.values()}


def _comments(source: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string
    return found


def _module_of(path: str) -> str | None:
    """``sync-service/src/leadline_sync/models.py`` → ``leadline_sync.models``."""
    parts = Path(path).with_suffix("").parts
    if "src" not in parts:
        return None
    return ".".join(parts[parts.index("src") + 1 :])


class _File:
    """One source file: which of its names are tenant tables, SQLAlchemy constructors and models
    modules."""

    def __init__(self, tree: ast.Module, path: str, tenants: TenantTables) -> None:
        self.tables: dict[str, str] = {}  # local name -> SQL table name
        # local name of a models module -> its tenant tables
        self.modules: dict[str, dict[str, str]] = {}
        self.sqlalchemy: dict[str, str] = {}  # local name -> sqlalchemy's select/update/delete/text
        own = tenants.by_module.get(_module_of(path) or "")
        if own:
            self.tables.update(own)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                self._import_from(node, tenants)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in tenants.by_module and alias.asname:
                        self.modules[alias.asname] = tenants.by_module[alias.name]

    def _import_from(self, node: ast.ImportFrom, tenants: TenantTables) -> None:
        module = node.module or ""
        for alias in node.names:
            local = alias.asname or alias.name
            if module.startswith("sqlalchemy") and alias.name in {*_CONSTRUCTORS, "text"}:
                self.sqlalchemy[local] = alias.name
            elif module in tenants.by_module and alias.name in tenants.by_module[module]:
                self.tables[local] = tenants.by_module[module][alias.name]
            elif f"{module}.{alias.name}" in tenants.by_module:
                self.modules[local] = tenants.by_module[f"{module}.{alias.name}"]

    def table(self, node: ast.AST) -> str | None:
        """The tenant table ``node`` names: ``mailbox``, ``models.user`` (not ``mailbox.c.id``)."""
        if isinstance(node, ast.Name):
            return self.tables.get(node.id)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in self.modules
        ):
            return self.modules[node.value.id].get(node.attr)
        return None


@dataclass
class _Query:
    start: ast.expr  # the constructor call, or the string of a plain-SQL statement
    top: ast.expr  # the outermost call of its method chain
    filters: list[ast.AST]  # the arguments of its where/join/... calls
    tables: set[str]
    lines: range


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _chain(
    start: ast.Call, parents: dict[ast.AST, ast.AST]
) -> tuple[ast.expr, list[tuple[str, ast.Call]]]:
    """Climb ``start.where(...).join(...)``: the outermost call and each method called on the
    way."""
    node: ast.expr = start
    methods: list[tuple[str, ast.Call]] = []
    while True:
        attribute = parents.get(node)
        call = parents.get(attribute) if attribute else None
        if not (
            isinstance(attribute, ast.Attribute)
            and isinstance(call, ast.Call)
            and call.func is attribute
        ):
            return node, methods
        methods.append((attribute.attr, call))
        node = call


def _arguments(call: ast.Call) -> list[ast.AST]:
    return [*call.args, *call.keywords]


def _names_scope(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id == SCOPE:
            return True
        if isinstance(child, ast.Attribute) and child.attr == SCOPE:
            return True
        if isinstance(child, ast.keyword) and child.arg == SCOPE:
            return True
    return False


class _Function:
    """The assignments of one function (or the module), to follow ``.where(*where)`` to where it was
    built."""

    def __init__(self, scope: ast.AST) -> None:
        self.assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(scope):
            if (
                isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign)
                and node.value is not None
            ):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.assigned.setdefault(target.id, []).append(node.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                # where.append(...), where.extend(...) add to a list of conditions
                if isinstance(node.func.value, ast.Name) and node.func.attr in {"append", "extend"}:
                    self.assigned.setdefault(node.func.value.id, []).extend(node.args)

    def scoped(self, node: ast.AST, depth: int = 3) -> bool:
        if _names_scope(node):
            return True
        if depth == 0:
            return False
        names = {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}
        return any(
            self.scoped(value, depth - 1) for name in names for value in self.assigned.get(name, [])
        )


class _Checker:
    def __init__(self, source: str, path: str, tenants: TenantTables) -> None:
        self.path = path
        self.tree = ast.parse(source, path)
        self.file = _File(self.tree, path, tenants)
        self.parents = _parents(self.tree)
        self.comments = _comments(source)
        self.sql_tables = tenants.sql_names()

    def violations(self) -> list[Violation]:
        found: list[Violation] = []
        queries = list(self._queries())
        scoped = [self._scoped(query) for query in queries]
        used: set[int] = set()
        for query, is_scoped in zip(queries, scoped, strict=True):
            if not query.tables or is_scoped or self._inside_scoped(query, queries, scoped):
                continue
            exemption = self._exemption(query.lines)
            if exemption is None:
                tables = ", ".join(sorted(query.tables))
                found.append(
                    Violation(
                        self.path,
                        query.start.lineno,
                        f"query on {tables} does not filter on {SCOPE}: scope it, or say why on "
                        "the query with '# unscoped: <why>'",
                    )
                )
                continue
            line, why = exemption
            used.add(line)
            if len(why.split()) < 3:
                found.append(
                    Violation(
                        self.path, line, "an '# unscoped:' exemption needs a reason of a few words"
                    )
                )
        for line, comment in self.comments.items():
            if EXEMPTION.match(comment) and line not in used:
                found.append(
                    Violation(
                        self.path, line, "'# unscoped:' exemption with no unscoped query under it"
                    )
                )
        return sorted(found, key=lambda v: v.line)

    def _queries(self) -> Iterator[_Query]:
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            tables = self._constructed_tables(node)
            if tables is None:
                continue
            top, methods = _chain(node, self.parents)
            filters = [
                arg for name, call in methods if name in _FILTERS for arg in _arguments(call)
            ]
            for name, call in methods:
                if name in {"select_from", "join", "outerjoin"}:
                    tables |= self._referenced(_arguments(call))
            tables |= self._referenced(filters)
            yield _Query(
                node,
                top,
                filters,
                tables,
                range(node.lineno - 1, (top.end_lineno or node.lineno) + 1),
            )
        for node in ast.walk(self.tree):
            if self._raw_sql(node):
                assert isinstance(node, ast.expr)
                tables = {
                    name
                    for name in _SQL_TABLE.findall(_string(node) or "")
                    if name in self.sql_tables
                }
                yield _Query(
                    node,
                    node,
                    [],
                    tables,
                    range(node.lineno - 1, (node.end_lineno or node.lineno) + 1),
                )

    def _raw_sql(self, node: ast.AST) -> bool:
        """A plain-SQL string (not the argument of ``text()``, which is checked as its call)."""
        if not isinstance(node, ast.Constant | ast.JoinedStr) or isinstance(
            self.parents.get(node), ast.JoinedStr
        ):
            return False
        parent = self.parents.get(node)
        if isinstance(parent, ast.Call) and self._sqlalchemy(parent) == "text":
            return False
        return RAW_SQL.match(_string(node) or "") is not None

    def _constructed_tables(self, call: ast.Call) -> set[str] | None:
        """The tenant tables a query constructor names, or None when ``call`` builds no query."""
        func = call.func
        constructor = self._sqlalchemy(call)
        if constructor == "text":
            return self._sql_tables(call)
        if constructor:
            tables = self._referenced(call.args)
            if (
                constructor in {"update", "delete"}
                and call.args
                and not tables
                and self._unknown(call.args[0])
            ):
                tables.add(f"<{ast.unparse(call.args[0])}>")
            if constructor == "select" and not tables:
                tables |= {f"<{ast.unparse(a)}>" for a in call.args if self._unknown(a)}
            return tables
        if isinstance(func, ast.Attribute) and func.attr in _CONSTRUCTORS:
            table = self.file.table(func.value)
            return {table} if table else None
        return None

    def _sqlalchemy(self, call: ast.Call) -> str | None:
        """Which of sqlalchemy's select/update/delete/text ``call`` calls, if any."""
        return self.file.sqlalchemy.get(call.func.id) if isinstance(call.func, ast.Name) else None

    def _unknown(self, node: ast.AST) -> bool:
        """A bare name bound to no table we know and no column: a parameter holding some table."""
        if not isinstance(node, ast.Name):
            return False
        function = self._enclosing_function(node)
        return function is not None and node.id in {
            a.arg for a in function.args.args + function.args.kwonlyargs
        }

    def _enclosing_function(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def _sql_tables(self, call: ast.Call) -> set[str] | None:
        sql = _string(call.args[0]) if call.args else None
        if sql is None:
            return set()
        return {name for name in _SQL_TABLE.findall(sql) if name in self.sql_tables}

    def _referenced(self, nodes: Iterable[ast.AST]) -> set[str]:
        """Tenant tables named in ``nodes`` outside the queries nested in them."""
        found: set[str] = set()
        stack = list(nodes)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Call) and self._constructed_tables(node) is not None:
                continue  # a nested query is checked on its own
            table = self.file.table(node)
            if table:
                found.add(table)
                continue
            stack.extend(ast.iter_child_nodes(node))
        return found

    def _scoped(self, query: _Query) -> bool:
        sql = self._sql_text(query)
        if sql is not None:
            match = _SQL_FILTER.search(sql)
            return match is not None and _SQL_SCOPED.search(sql[match.start() :]) is not None
        scope = self._enclosing_function(query.start) or self.tree
        function = _Function(scope)
        if any(function.scoped(arg) for arg in query.filters):
            return True
        # query = select(...); ... query = query.where(table.c.company_id == ...)
        name = self._assigned_name(query)
        return name is not None and any(self._filters_name(node, name) for node in ast.walk(scope))

    def _sql_text(self, query: _Query) -> str | None:
        """The SQL of a text() or plain-SQL query (None for a SQLAlchemy-built one)."""
        start = query.start
        if isinstance(start, ast.Call):
            return (
                (_string(start.args[0]) or "")
                if self._sqlalchemy(start) == "text" and start.args
                else None
            )
        return _string(start) or ""

    def _filters_name(self, node: ast.AST, name: str) -> bool:
        """``node`` is ``name.where(... company_id ...)``."""
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
            and node.func.attr in _FILTERS
            and any(_names_scope(arg) for arg in _arguments(node))
        )

    def _inside_scoped(self, query: _Query, queries: list[_Query], scoped: list[bool]) -> bool:
        """``query`` is a subquery of a scoped query: written inside it, or held in a variable used
        in it."""
        outer = [q.top for q, s in zip(queries, scoped, strict=True) if s and q is not query]
        node: ast.AST = query.start
        while node in self.parents:
            node = self.parents[node]
            if any(node is top for top in outer):
                return True
        name = self._assigned_name(query)
        return name is not None and any(
            isinstance(used, ast.Name) and used.id == name
            for top in outer
            for used in ast.walk(top)
        )

    def _assigned_name(self, query: _Query) -> str | None:
        holder = self.parents.get(query.top)
        if (
            isinstance(holder, ast.Assign)
            and len(holder.targets) == 1
            and isinstance(holder.targets[0], ast.Name)
        ):
            return holder.targets[0].id
        return None

    def _exemption(self, lines: range) -> tuple[int, str] | None:
        for line in lines:
            match = EXEMPTION.match(self.comments.get(line, ""))
            if match:
                return line, match["why"].strip()
        return None


def _string(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
            for v in node.values
        )
    return None


def check_source(source: str, path: str, tenants: TenantTables) -> list[Violation]:
    return _Checker(source, path, tenants).violations()


def source_files(root: Path) -> Iterator[Path]:
    for folder in SERVICES:
        for path in sorted((root / folder / "src").rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def check_tree(root: Path) -> list[Violation]:
    tenants = TenantTables.of_services()
    return [
        violation
        for path in source_files(root)
        for violation in check_source(path.read_text(), str(path.relative_to(root)), tenants)
    ]
