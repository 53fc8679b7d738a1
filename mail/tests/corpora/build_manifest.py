"""Build ``manifest.json`` and copy the notices from their public sources (run once; the result is committed).

    uv run python mail/tests/corpora/build_manifest.py SISIMAI_RB_CHECKOUT FLUFL_BOUNCE_SDIST_DIR CPYTHON_LIB_DIR

* sisimai (BSD-2-Clause): the notices of ``set-of-emails/maildir/bsd`` and ``maildir/not`` inside an
  rb-sisimai checkout, with the status, reason and class that its own tests expect per file
  (``test/public/*.rb``: ``'NN' => [['D.S.N.', 'replycode', 'REASON', hardbounce, 'feedbacktype'], ...]``,
  the feedback type only for complaints: ``abuse``, ``opt-out``, ``auth-failure``, ...).  sisimai's
  expectations do not name the recipient: the manifest names the one the notice itself states in machine
  form (``Final-Recipient``, ``Original-Recipient``, ``X-Failed-Recipients``), else the single ``To`` of the
  returned original, else none (those notices are scored on recognition and class only).
* flufl.bounce (Apache-2.0, Mailman's bounce detector): ``tests/data`` of its sdist, with the addresses and
  the temporary/permanent flag of its ``tests/test_detectors.py`` table; samples it expects nothing of are
  look-alikes.
* CPython's ``Lib/test/test_email/data`` (PSF licence): ordinary mail, look-alikes; delivery reports left out.

A fifth of the notices (by a hash of the file name) is held out: the fixes were made without reading them.
"""

from __future__ import annotations

import ast
import email.message
import email.parser
import email.policy
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).parent
_EXPECTED_RE = re.compile(r"'(\d+)'\s*=>\s*\[(.*?)\]\],?\s*$", re.MULTILINE | re.DOTALL)
_ROW_RE = re.compile(r"\[\s*'([^']*)',\s*'([^']*)',\s*'([^']*)',\s*(true|false)(?:,\s*'([^']*)')?")
_ADDRESS_RE = re.compile(r"[A-Za-z0-9._%+=-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def held_out(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] % 5 == 0


def _classify(status: str) -> str:
    return "soft" if status.startswith("4") else "hard"


def _stated_recipients(raw: bytes) -> list[str]:
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    found: list[str] = []
    for value in message.get_all("x-failed-recipients") or []:
        found += _ADDRESS_RE.findall(str(value))
    for part in message.walk():
        if part.get_content_type() in {"message/delivery-status", "message/global-delivery-status"}:
            payload = part.get_payload()
            text = (
                "\n".join(cast(email.message.Message, p).as_string() for p in payload)
                if isinstance(payload, list)
                else str(payload)
            )
            for line in text.splitlines():
                if re.match(r"(?i)(final|original)-recipient:", line):
                    found += _ADDRESS_RE.findall(line.split(";", 1)[-1])
    if not found:
        for part in message.walk():
            if part.get_content_type() in {"message/rfc822", "text/rfc822-headers"}:
                payload = part.get_payload()
                inner = cast(
                    email.message.Message,
                    payload[0]
                    if isinstance(payload, list)
                    else email.parser.Parser().parsestr(str(payload), headersonly=True),
                )
                to = _ADDRESS_RE.findall(str(inner.get("to", "")))
                if len(set(a.lower() for a in to)) == 1:
                    found = to
                break
    return list(dict.fromkeys(a.lower().rstrip(".") for a in found))


def sisimai(checkout: Path) -> list[dict[str, Any]]:
    def show(path: str) -> bytes:
        return subprocess.run(
            ["git", "-C", str(checkout), "show", f"HEAD:{path}"], check=True, capture_output=True
        ).stdout

    names = subprocess.run(
        ["git", "-C", str(checkout), "ls-tree", "--name-only", "HEAD", "test/public/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    entries: list[dict[str, Any]] = []
    target = HERE / "sisimai"
    target.mkdir(exist_ok=True)
    (target / "LICENSE").write_bytes(show("LICENSE"))
    for test in names:
        stem = Path(test).stem
        if not (
            re.fullmatch(r"(lhost|rhost)-[a-z0-9]+", stem) or stem in {"arf", "rfc3464", "rfc3834"}
        ):
            continue
        source = show(test).decode()
        for index, body in _EXPECTED_RE.findall(source):
            rows = _ROW_RE.findall(body)
            if not rows:
                continue
            name = f"{stem}-{index}.eml"
            try:
                raw = show(f"set-of-emails/maildir/bsd/{name}")
            except subprocess.CalledProcessError:
                continue
            (target / name).write_bytes(raw)
            status, _, reason, _, feedback_type = rows[0]
            if reason == "feedback":
                kind, klass = "complaint", None
            elif reason in {"vacation", "delivered"}:
                kind, klass = "lookalike", None
            else:
                kind, klass = "bounce", _classify(status)
            recipients = _stated_recipients(raw) if kind == "bounce" else []
            entries.append(
                {
                    "file": f"sisimai/{name}",
                    "kind": kind,
                    "recipient": recipients[0] if recipients else None,
                    "class": klass,
                    "status": status,
                    "reason": reason,
                    **({"feedback_type": feedback_type} if kind == "complaint" else {}),
                }
            )
    for path in (
        "set-of-emails/maildir/not/is-not-bounce-01.eml",
        "set-of-emails/maildir/not/is-not-bounce-02.eml",
    ):
        name = Path(path).name
        (target / name).write_bytes(show(path))
        entries.append(
            {
                "file": f"sisimai/{name}",
                "kind": "lookalike",
                "recipient": None,
                "class": None,
                "status": "",
                "reason": "not a bounce",
            }
        )
    return entries


def flufl(sdist: Path) -> list[dict[str, Any]]:
    target = HERE / "flufl"
    target.mkdir(exist_ok=True)
    shutil.copy(sdist / "LICENSE", target / "LICENSE")
    tree = ast.parse((sdist / "tests" / "test_detectors.py").read_text())
    table: dict[str, tuple[list[str], bool]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "DETECTORS" for t in node.targets
        ):
            for _, file, addresses, temporary in ast.literal_eval(node.value):
                table[file] = ([a.decode().lower() for a in addresses], temporary)
    entries: list[dict[str, Any]] = []
    for path in sorted((sdist / "tests" / "data").glob("*.txt")):
        shutil.copy(path, target / path.name)
        addresses, temporary = table.get(path.name, ([], False))
        if addresses:
            entries.append(
                {
                    "file": f"flufl/{path.name}",
                    "kind": "bounce",
                    "recipient": addresses[0],
                    "class": "soft" if temporary else "hard",
                    "status": "",
                    "reason": "",
                }
            )
        else:
            entries.append(
                {
                    "file": f"flufl/{path.name}",
                    "kind": "unscored",
                    "recipient": None,
                    "class": None,
                    "status": "",
                    "reason": "flufl.bounce expects no address",
                }
            )
    return entries


def cpython(lib: Path) -> list[dict[str, Any]]:
    target = HERE / "cpython"
    target.mkdir(exist_ok=True)
    entries: list[dict[str, Any]] = []
    for path in sorted((lib / "test" / "test_email" / "data").glob("msg_*.txt")):
        raw = path.read_bytes()
        if b"multipart/report" in raw.lower() or b"delivery-status" in raw.lower():
            continue
        shutil.copy(path, target / path.name)
        entries.append(
            {
                "file": f"cpython/{path.name}",
                "kind": "lookalike",
                "recipient": None,
                "class": None,
                "status": "",
                "reason": "ordinary mail",
            }
        )
    (target / "LICENSE").write_text(
        "Python Software Foundation License Version 2, "
        "https://docs.python.org/3/license.html (files from Lib/test/test_email/data)\n"
    )
    return entries


def main() -> None:
    entries = sisimai(Path(sys.argv[1])) + flufl(Path(sys.argv[2])) + cpython(Path(sys.argv[3]))
    for entry in entries:
        entry["held_out"] = held_out(entry["file"])
    (HERE / "manifest.json").write_text(json.dumps(entries, indent=1) + "\n")
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["kind"]] = counts.get(entry["kind"], 0) + 1
    print(counts, sum(e["held_out"] for e in entries), "held out")


if __name__ == "__main__":
    main()
