"""The data layer's one error type, shared by every module that reads a user's collection."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data source that cannot be used; the message says what to fix."""
