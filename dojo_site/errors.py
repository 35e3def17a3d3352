"""Errors a user can cause. Services raise these; each interface maps them once:
the API to 4xx JSON (dojo_site/api.py), commands to CommandError, views to form errors/messages."""


class DojoError(Exception):
    """Base class: a clear, one-line message meant for the user."""

    status_code = 400


class InvalidInput(DojoError):
    status_code = 422


class NotFound(DojoError):
    status_code = 404


class Conflict(DojoError):
    status_code = 409


class NotReady(DojoError):
    """The thing exists but is not in a state that allows this (e.g. the task is not frozen)."""

    status_code = 409


class Forbidden(DojoError):
    """The user sees the thing but may not do this with it (domains/permissions.py decides)."""

    status_code = 403
