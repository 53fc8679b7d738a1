"""Settings of the sync service (environment variables ``LEADLINE_SYNC_*`` on top of the kit's)."""

from __future__ import annotations

import base64
import os

from pydantic import Field, SecretStr, model_validator

from leadline_kit.sealing import parse_keys
from leadline_kit.settings import KitSettings
from leadline_mail.net import IPNetwork, parse_allowlist
from leadline_sync.oauth.apps import OAuthAppSettings

DEV_CREDENTIAL_KEY = "dev:" + base64.b64encode(b"leadline-development-only-key-32").decode()
"""A fixed key so that development data survives restarts; refused outside development."""


class Settings(KitSettings):
    # Networks a user-given mail host may resolve into although not public (R24), e.g.
    # "127.0.0.0/8".
    sync_allow_networks: str = ""
    # Plaintext IMAP/SMTP (no TLS at all) only where an operator allows it (R22).
    sync_allow_plaintext: bool = False
    # Extra CA bundle for mail servers (tests trust their own CA with it).
    sync_ca_file: str | None = None
    # Key-encryption keys "id:key" (32 bytes, base64 or hex) separated by commas; the first encrypts
    # (R25).
    sync_credential_keys: SecretStr = SecretStr(DEV_CREDENTIAL_KEY)
    # Name of this replica in leases; empty = host name + process id.
    sync_replica: str = ""
    # Mailboxes one replica holds at once (live and rotating): by default as many as the
    # file-descriptor limit and the memory budget allow (sync/capacity.py); this caps it.
    sync_max_mailboxes: int | None = Field(None, ge=1)
    sync_memory_budget_mb: int = 1024  # memory this replica may spend on held mailboxes
    # what one held mailbox costs (estimate; bench/sync-scale)
    sync_mailbox_memory_kib: int = Field(200, ge=1)
    # Every enabled mailbox is synced at least this often; the ones no replica holds live are served
    # in turns.
    sync_rotation_seconds: float = 900.0
    sync_rotation_slots: int = Field(4, ge=1)  # of a replica's mailboxes, how many serve the turns
    # A folder whose UIDVALIDITY changes is rescanned at most this often a day; then it waits for
    # the next day.
    sync_max_resets_per_day: int = Field(3, ge=0)
    # logins (connect, TLS, LOGIN) one replica runs at once; the others queue (sync/pacing.py)
    sync_max_logins: int = Field(32, ge=1)
    # of those, how many may scan, fetch or store a batch at one moment
    sync_max_busy: int = Field(8, ge=1)
    # database connections the mailbox workers share, apart from the API's pool: however many
    # mailboxes a replica holds, this many of their transactions run at once and the others wait
    # their turn.  A transaction holds its connection until the busy event loop comes back to it
    # (0.1-0.3 s while thousands of mailboxes come online), so these bound the workers' throughput,
    # not PostgreSQL: 8 gave ~40 transactions a second, 2 mailboxes a second brought online
    # (bench/sync-scale, N = 5,000)
    sync_db_connections: int = Field(32, ge=1)
    # a worker whose turn came waits this long for its connection (being made, or held elsewhere);
    # then it backs off and tries again, as after any transient database error
    sync_db_wait_seconds: float = Field(30.0, gt=0)
    # worker processes that parse messages off the event loop; 0 = parse in the event loop; unset =
    # one fewer than the cores this process may run on (at least one): the event loop keeps a core
    sync_parse_processes: int | None = Field(None, ge=0, le=64)
    sync_lease_seconds: float = Field(30.0, gt=0)
    # how often the replica claims work and renews leases
    sync_schedule_interval: float = Field(2.0, gt=0)
    # live sync: every folder is checked at least this often
    sync_poll_seconds: float = Field(60.0, gt=0)
    # use IMAP NOTIFY (RFC 5465) where the server offers it: Sent's new mail is pushed like INBOX's
    sync_notify: bool = True
    # without NOTIFY, how often Sent (and, without IDLE, INBOX) is checked with STATUS
    sync_sent_poll_seconds: float = Field(8.0, gt=0)
    # bodies (lead mail, bounce candidates) per scan batch, one transaction each; the mail of no
    # lead between them joins the batch (headers are read up to 1,000 at a time)
    sync_batch_size: int = Field(200, ge=1, le=1000)
    # and at most this many bytes of bodies (their RFC822.SIZE) per batch: a scan holds three
    # batches' bodies at once (one read, one parsed, one stored), so this bounds its memory,
    # whatever the attachments
    sync_batch_bytes: int = Field(2 * 1024 * 1024, ge=64 * 1024)
    # the historical sync reads a folder newest first, this many UIDs in its first pass, each next
    # pass twice the last, up to eight times; the folders take turns (the newest mail of Sent and of
    # INBOX reaches the timelines in the first seconds)
    sync_history_window: int = Field(500, ge=1)
    sync_retry_base_seconds: float = Field(30.0, gt=0)
    sync_retry_max_seconds: float = Field(1800.0, gt=0)
    sync_give_up_hours: float = Field(48.0, gt=0)  # R8: continuous failure → connection_failed
    rpc_timeout_seconds: float = Field(3.0, gt=0)
    # before a historical sync, wait this long at most for the company's leads to reach this service
    sync_directory_wait_seconds: float = Field(60.0, gt=0)
    sync_imap_timeout: float = Field(30.0, gt=0)
    # Provider apps for signing in with Gmail / Microsoft (JSON keyed by preset; see
    # leadline_sync.oauth.apps).
    sync_oauth_apps: dict[str, OAuthAppSettings] = {}
    sync_oauth_state_seconds: float = Field(600.0, gt=0, le=3600)  # how long a sign-in may take
    # a sign-in the provider's redirect brought back without a key waits this long for its starter's
    # key (POST /v1/mail-sync/oauth/finish); the provider's code must still be good then (Google's
    # and Microsoft's live some minutes)
    sync_oauth_handoff_seconds: float = Field(120.0, gt=0, le=600)
    # renew an access token this long before expiry
    sync_oauth_refresh_margin_seconds: float = Field(300.0, ge=0)
    sync_oauth_timeout: float = Field(10.0, gt=0)  # one call to a provider's token endpoint
    # tries of a token endpoint answering 5xx or not at all
    sync_oauth_attempts: int = Field(4, ge=1, le=10)
    # R29: how long PUT /v1/mail-sync waits for the address proof to arrive in the INBOX (the whole
    # request must stay under the gateway's upstream timeout, 60 s by default)
    sync_address_proof_seconds: float = Field(30.0, gt=0, le=300)
    consumer_prefix: str = "sync"

    @model_validator(mode="after")
    def _checked(self) -> Settings:
        if self.sync_memory_budget_mb * 1024 < self.sync_mailbox_memory_kib:
            raise ValueError(
                f"LEADLINE_SYNC_MEMORY_BUDGET_MB={self.sync_memory_budget_mb} is less than one "
                f"mailbox needs ({self.sync_mailbox_memory_kib} KiB, "
                f"LEADLINE_SYNC_MAILBOX_MEMORY_KIB): no mailbox could be synced"
            )
        if not self.sync_rotation_seconds > 0:
            raise ValueError(
                f"LEADLINE_SYNC_ROTATION_SECONDS={self.sync_rotation_seconds:g} must be more than "
                "0: it is the longest time an enabled mailbox may wait for its next sync"
            )
        if self.sync_rotation_seconds < self.sync_poll_seconds:
            raise ValueError(
                f"LEADLINE_SYNC_ROTATION_SECONDS={self.sync_rotation_seconds:g} is shorter than "
                f"LEADLINE_SYNC_POLL_SECONDS={self.sync_poll_seconds:g}: a mailbox served in turns "
                "cannot be synced more often than a live one polls"
            )
        self.credential_keys()
        self.allow_networks()
        if (
            self.environment == "production"
            and self.sync_credential_keys.get_secret_value() == DEV_CREDENTIAL_KEY
        ):
            raise ValueError("LEADLINE_SYNC_CREDENTIAL_KEYS must be set outside development")
        return self

    def parse_processes(self) -> int:
        if self.sync_parse_processes is not None:
            return self.sync_parse_processes
        # the cores this process may run on (a container's CPU set); where the OS cannot say, all of
        # them
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        return max(1, cores - 1)

    def allow_networks(self) -> list[IPNetwork]:
        return parse_allowlist(self.sync_allow_networks)

    def credential_keys(self) -> list[tuple[str, bytes]]:
        """The key-encryption keys, current first."""
        return parse_keys(
            self.sync_credential_keys.get_secret_value(), "LEADLINE_SYNC_CREDENTIAL_KEYS"
        )
