"""Date formats of the admin, the same in every language: ISO dates and 24-hour times (2026-12-08 14:05),
which an operator reads alike in all five and which sort as text. Numbers keep each language's own
separators (Django's formats for the language)."""
