"""When a live session checks each folder again.

A connected mailbox keeps INBOX selected and waits in IDLE.  Which folder is
looked at after a wait depends on what the server can push::

    server offers          INBOX is checked            Sent is checked
    NOTIFY (RFC 5465)      on news, or every poll      on news (an unsolicited STATUS), or every poll
    IDLE only              on news (EXISTS), or every  every ``sync_sent_poll_seconds`` (STATUS, then
                           poll                         SELECT only when it changed)
    neither                every ``sync_sent_poll_seconds``, both

"Every poll" (``sync_poll_seconds``) is the safety net for a notification a
server failed to send.  A folder is also checked when the session starts, and
INBOX whenever another folder was selected since (IDLE needs INBOX selected).
The decisions are pure functions of the clock and the news, so they are tested
without a server.
"""  # noqa: E501

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FolderWatch:
    idle_folder: str  # the folder kept selected for IDLE (INBOX)
    pushed: bool  # the server pushes changes of every watched folder (NOTIFY is in force)
    idle: bool  # the server offers IDLE (changes of the selected folder are pushed)
    poll_seconds: float
    unpushed_poll_seconds: float
    checked_at: dict[str, float] = field(default_factory=dict)

    def period(self, folder: str) -> float:
        """How long a folder may go unchecked."""
        if self.pushed or (self.idle and folder == self.idle_folder):
            return self.poll_seconds
        return min(self.poll_seconds, self.unpushed_poll_seconds)

    def due(self, folder: str, news: set[str], now: float, selected: str | None) -> bool:
        checked = self.checked_at.get(folder)
        return (
            checked is None
            or folder in news
            or now - checked >= self.period(folder)
            or (folder == self.idle_folder and selected != folder)
        )

    def checked(self, folder: str, now: float) -> None:
        self.checked_at[folder] = now

    def wait_seconds(self, now: float) -> float:
        """Until the next folder falls due, if no news comes first."""
        if not self.checked_at:
            return 0.0
        return max(
            0.0, min(at + self.period(folder) for folder, at in self.checked_at.items()) - now
        )
