"""Subjects and the JetStream stream that carries every Leadline event.

Events live under ``leadline.<domain>.<event>.v<N>``.  Request/reply asks live
under ``leadline-rpc.>``, outside the stream, so JetStream never answers a
request with a publish acknowledgement.
"""

from __future__ import annotations

STREAM_NAME = "LEADLINE_EVENTS"
EVENT_DOMAINS = ("company", "user", "lead", "blocklist", "mail", "mailbox", "quota")
STREAM_SUBJECTS = [f"leadline.{domain}.>" for domain in EVENT_DOMAINS]


def event_subject(type_: str, version: int) -> str:
    return f"leadline.{type_}.v{version}"


# request/reply (NATS core, not JetStream)
RPC_QUOTA_RESERVE = "leadline-rpc.quota.reserve"
RPC_QUOTA_CHECK = "leadline-rpc.quota.check"  # same request as reserve; answers without reserving
RPC_QUOTA_COMMIT = "leadline-rpc.quota.commit"
RPC_QUOTA_RELEASE = "leadline-rpc.quota.release"
RPC_MAILBOX_SLOT_CLAIM = "leadline-rpc.quota.mailbox-slot.claim"
RPC_MAILBOX_SLOT_RELEASE = "leadline-rpc.quota.mailbox-slot.release"
# plan limit on synced emails per user per day
RPC_SYNC_ALLOWANCE = "leadline-rpc.quota.sync-allowance"
RPC_MAILBOX_SMTP = "leadline-rpc.sync.mailbox-smtp"
# a lead's addresses before its lead.created arrives
RPC_LEAD_ADDRESSES = "leadline-rpc.lead.addresses"
# how many leads a company has (the sync waits for them)
RPC_LEAD_DIRECTORY = "leadline-rpc.lead.directory"
# which leads' timelines hold a Message-ID
RPC_MESSAGE_TIMELINE = "leadline-rpc.lead.message-timeline"
