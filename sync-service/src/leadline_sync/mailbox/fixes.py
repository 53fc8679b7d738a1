"""What each kind of mailbox error means for the user, and how to fix it (the error log, R8,
R10)."""

from __future__ import annotations

from leadline_mail.net import ErrorKind

FIXES: dict[ErrorKind, str] = {
    ErrorKind.AUTH_FAILED: (
        "Update the password in your Mail Sync settings. If your provider uses app passwords "
        "(Gmail, Yahoo, AOL, AT&T), create one and enter it instead of your account password."
    ),
    ErrorKind.IMAP_DISABLED: (
        "Turn on IMAP access in your mail provider's settings, then save your Mail Sync settings "
        "again."
    ),
    ErrorKind.TLS: (
        'If your server uses a self-signed certificate, tick "self-signed certificate"; otherwise '
        'check the port and the "use SSL" setting.'
    ),
    ErrorKind.UNREACHABLE: (
        "Check the server name and port, and that your mail server accepts connections from "
        "Leadline."
    ),
    ErrorKind.TIMEOUT: (
        "Check the server name and port, and that no firewall blocks Leadline. Leadline keeps "
        "retrying."
    ),
    ErrorKind.PROTOCOL: (
        "Check that the host and port are your provider's IMAP (or SMTP) server. Contact support "
        "if this continues."
    ),
    ErrorKind.NOT_ALLOWED: "Use your mail provider's public server name.",
    ErrorKind.TOO_MANY_CONNECTIONS: (
        "Nothing to do if it passes: Leadline waits and connects again by itself. If it continues, "
        "close other mail apps connected to this mailbox, or ask your mail administrator to allow "
        "more connections."
    ),
    ErrorKind.OAUTH_REFUSED: (
        "Reconnect your account: sign in with {provider} again under Mail Sync. Your history is "
        "kept. If it happens again, ask your administrator whether IMAP and SMTP are allowed for "
        "your account."
    ),
    ErrorKind.OAUTH_REVOKED: (
        "Reconnect your account: sign in with {provider} again under Mail Sync (access was "
        "withdrawn or your password changed). Sync resumes where it stopped; your history is kept."
    ),
    ErrorKind.OAUTH_UNAVAILABLE: (
        "Nothing to do: {provider}'s sign-in service did not answer; Leadline keeps retrying."
    ),
    ErrorKind.ADDRESS_UNPROVEN: (
        "Connect the address that these logins belong to: Leadline sends a message through your "
        "SMTP login to"
        " the address and must find it in the INBOX of your IMAP login. Check the address and both "
        "user names, and that no filter moves mail to this address out of the INBOX, then save "
        "again."
    ),
    ErrorKind.ADDRESS_TAKEN: (
        "Another user of your company already syncs this address. Each address is synced by one "
        "mailbox only:"
        " connect your own address."
    ),
    ErrorKind.CREDENTIALS_UNREADABLE: "Enter your password again in your Mail Sync settings.",
    ErrorKind.MAILBOX_LIMIT_UNAVAILABLE: (
        "Nothing to do: Leadline checks the company mailbox limit again by itself. Contact support "
        "if this continues."
    ),
    ErrorKind.CONNECTION_FAILED: (
        "Leadline stopped trying after two days of failures. Update your Mail Sync settings or "
        "password to start syncing again."
    ),
    ErrorKind.PLAN_LIMIT: (
        "Nothing is lost: sync continues when the daily limit renews. To sync more, ask your "
        "administrator to"
        " change the company's plan."
    ),
    ErrorKind.MESSAGE_UNREADABLE: (
        "Nothing to do: the message was kept as it was received and marked as damaged."
    ),
    ErrorKind.LEADS_BEHIND: (
        "Nothing to do: when the missing leads reach Mail Sync, their mail in the history is "
        "looked for again. If leads keep arriving late, check that the lead service is running."
    ),
    ErrorKind.AUDIT_REPAIRED: (
        "Nothing to do: the messages were examined now. If this happens again, contact support: a "
        "batch of the sync was lost."
    ),
    ErrorKind.FOLDER_RESET: (
        "Nothing to do: the server renumbered the folder; Leadline re-read it without duplicates."
    ),
    ErrorKind.FOLDER_RESET_LIMIT: (
        "Your mail server keeps renumbering this folder (its UIDVALIDITY changes), which usually "
        "means the folder is deleted and re-created, restored from a backup, or its index is "
        "rebuilt. Ask your mail provider or administrator to stop that. Leadline reads the folder "
        "again by itself when the day given"
        " ends, without duplicates."
    ),
}


PROVIDER_NAMES = {"gmail": "Google", "office365": "Microsoft", "outlook": "Microsoft"}


def fix_for(kind: ErrorKind, provider: str | None = None) -> str:
    """The fix for ``kind``; ``provider`` (a preset id) names whom to sign in with again."""
    return FIXES[kind].format(provider=PROVIDER_NAMES.get(provider or "", "your provider"))
