"""Provider presets (R2), loaded once from the reviewed data file ``providers.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Literal, cast

from leadline_mail.net import TlsMode

Protocol = Literal["imap", "smtp"]


@dataclass(frozen=True)
class ServerPreset:
    host: str  # may contain "{domain}"
    port: int
    tls: TlsMode

    def for_address(self, address: str) -> ServerPreset:
        domain = address.rpartition("@")[2]
        return ServerPreset(self.host.replace("{domain}", domain), self.port, self.tls)


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    imap: ServerPreset | None  # None for "custom"
    smtp: ServerPreset | None
    provider_saves_sent: bool
    note: str

    @property
    def host_from_domain(self) -> bool:
        return self.imap is not None and "{domain}" in self.imap.host


def _server(raw: object) -> ServerPreset | None:
    if raw is None:
        return None
    entry = cast(dict[str, object], raw)
    tls = str(entry["tls"])
    if tls not in ("implicit", "starttls"):
        raise ValueError(f"preset TLS mode {tls!r} is not allowed")
    return ServerPreset(
        host=str(entry["host"]), port=int(cast(int, entry["port"])), tls=cast(TlsMode, tls)
    )


@cache
def providers() -> dict[str, Provider]:
    raw = tomllib.loads(files("leadline_sync").joinpath("providers.toml").read_text())
    return {
        key: Provider(
            id=key,
            name=str(value["name"]),
            imap=_server(value.get("imap")),
            smtp=_server(value.get("smtp")),
            provider_saves_sent=bool(value.get("provider_saves_sent", False)),
            note=str(value.get("note", "")),
        )
        for key, value in raw.items()
    }
