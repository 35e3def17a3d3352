from django.db.backends.sqlite3 import base, operations

from dojo_site.db import NulSafeOperationsMixin, NulSafeWrapperMixin


class DatabaseOperations(NulSafeOperationsMixin, operations.DatabaseOperations):
    pass


class DatabaseWrapper(NulSafeWrapperMixin, base.DatabaseWrapper):
    ops_class = DatabaseOperations
