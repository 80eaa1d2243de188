"""The one exception family of the index package, so callers (script, app) catch one thing."""

from __future__ import annotations


class IndexDirError(RuntimeError):
    """An index folder that is missing, incomplete, truncated or inconsistent; the message says which."""


class UnsafePathError(IndexDirError):
    """A stored path that would resolve outside the index's image root (path traversal)."""
