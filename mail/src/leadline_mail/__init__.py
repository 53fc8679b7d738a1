"""Mail protocol parts shared by the sync and send services.

- :mod:`leadline_mail.net`: where a connection may go (R24 host vetting) and how TLS is checked
  (pinning).
- :mod:`leadline_mail.imap`: an IMAP client on asyncio streams (STARTTLS, timeouts, quoting, IDLE,
  CONDSTORE).
- :mod:`leadline_mail.addresses`: the normalised form of an email address that leads are matched on.
- :mod:`leadline_mail.mime`: header and message parsing of hostile input, with caps (R23, R27).
- :mod:`leadline_mail.bounces`: delivery status notifications (R17).
"""
