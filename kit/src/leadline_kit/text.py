"""What a text field of the API may hold: no control characters and no line or paragraph separators.

A name, a subject or a search term is one line of text.  C0 controls (NUL above all: PostgreSQL
refuses it in text), DEL, NEL (U+0085) and the Unicode line and paragraph separators (U+2028,
U+2029) are refused at the API with a 422, so they never reach a header, a log line or the database.
It is a pattern, not a validator, so that it shows in the OpenAPI document and generated requests
respect it.
"""

from __future__ import annotations

ONE_LINE = r"^[^\x00-\x1f\x7f\x85\u2028\u2029]*$"
