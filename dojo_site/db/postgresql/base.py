"""PostgreSQL, NUL-safe (see dojo_site/db), and surviving a database restart.

A worker holds its connections for hours. When PostgreSQL restarts (an upgrade, a failover, a crash),
every one of them is dead, and Django would raise on each later query of that connection: a run lost
its heartbeat and every event it tried to write, and was reaped while its worker was alive. Here:
- a connection that has seen an error is health-checked (SELECT 1) before its next cursor, and
  replaced when dead (Django checks only once per request, and a worker has no requests);
- a statement that fails because the connection died, outside a transaction, is retried on a new
  connection for up to DOJO_DB_RETRY_SECONDS (the database may still be starting). Inside a
  transaction it is not: the transaction is gone, and the caller's step fails as before.
"""

import logging
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.backends.postgresql import base, operations
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from dojo_site.db import NulSafeCursorMixin, NulSafeOperationsMixin, NulSafeWrapperMixin

logger = logging.getLogger(__name__)


class DatabaseOperations(NulSafeOperationsMixin, operations.DatabaseOperations):
    pass


class ReconnectingCursorMixin:
    def execute(self, sql, params=None):
        return self._with_reconnect(super().execute, sql, params)

    def executemany(self, sql, param_list):
        param_list = list(param_list)  # a retry must see the parameters again
        return self._with_reconnect(super().executemany, sql, param_list)

    def _with_reconnect(self, call, *args):
        try:
            return call(*args)
        except (OperationalError, InterfaceError):
            if self.db.in_atomic_block or (self.db.connection is not None and self.db.is_usable()):
                raise  # a transaction's work is lost, or the error was not the connection's
            logger.warning("database connection lost; reconnecting")
        self.db.close()
        self.db.ensure_connection()  # retries while the server starts (DatabaseWrapper below)
        self.cursor = self.db.create_cursor()
        return call(*args)


class DojoCursorWrapper(NulSafeCursorMixin, ReconnectingCursorMixin, CursorWrapper):
    pass


class DojoCursorDebugWrapper(NulSafeCursorMixin, ReconnectingCursorMixin, CursorDebugWrapper):
    pass


class DatabaseWrapper(NulSafeWrapperMixin, base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def make_cursor(self, cursor):
        return DojoCursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor):
        return DojoCursorDebugWrapper(cursor, self)

    def ensure_connection(self):
        """Connect, retrying for up to DOJO_DB_RETRY_SECONDS while the server refuses (restarting)."""
        if self.connection is not None or self.in_atomic_block:
            return super().ensure_connection()
        deadline = time.monotonic() + float(getattr(settings, "DOJO_DB_RETRY_SECONDS", 30))
        delay = 0.2
        while True:
            try:
                return super().ensure_connection()
            except OperationalError:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("database unreachable; retrying in %.1f s", delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close_if_health_check_failed(self):
        # After an error, check again before the next cursor (Django checks once per request).
        if self.errors_occurred and not self.in_atomic_block:
            self.health_check_done = False
        super().close_if_health_check_failed()
