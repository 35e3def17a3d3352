"""Database backends that keep NUL characters out of the database.

PostgreSQL refuses a NUL (U+0000) in text and in jsonb, so one NUL printed by a train() or typed into
a hypothesis turned a routine write into an error (a 500, or an experiment left "running"). SQLite
stores it, and the text later breaks the subprocess arguments it is passed to (the Claude CLI's
prompt). Rather than cleaning each of the dozens of places where text enters the database, these
backends strip NUL from every string parameter of every query, JSON values included: one rule at the
one door every write goes through. Nothing Dojo stores means anything by a NUL.
"""

from typing import Any

from django.db.backends.utils import CursorDebugWrapper, CursorWrapper


def without_nul(value: Any) -> Any:
    """Return value with NUL characters removed from every string in it (containers rebuilt)."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, list | tuple):
        return type(value)(without_nul(item) for item in value)
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value


class NulSafeCursorMixin:
    def execute(self, sql, params=None):
        return super().execute(sql, without_nul(params))

    def executemany(self, sql, param_list):
        return super().executemany(sql, (without_nul(params) for params in param_list))


class NulSafeCursorWrapper(NulSafeCursorMixin, CursorWrapper):
    pass


class NulSafeCursorDebugWrapper(NulSafeCursorMixin, CursorDebugWrapper):
    pass


class NulSafeOperationsMixin:
    def adapt_json_value(self, value, encoder):
        # JSON reaches the cursor already encoded ("\\u0000" is no NUL character any more).
        return super().adapt_json_value(without_nul(value), encoder)


class NulSafeWrapperMixin:
    def make_cursor(self, cursor):
        return NulSafeCursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor):
        return NulSafeCursorDebugWrapper(cursor, self)
