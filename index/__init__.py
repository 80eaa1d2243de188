"""Nearest-neighbour index over instance-discrimination embeddings: FAISS + SQLite metadata.

Build with ``scripts/build_index.py`` (or :func:`index.build.build`), search with
:class:`index.search.SearchIndex`. See docs/index.md.
"""

from .build import BuildOptions, add, build, remove
from .errors import IndexDirError, UnsafePathError
from .search import Hit, SearchIndex

__all__ = ["BuildOptions", "Hit", "IndexDirError", "SearchIndex", "UnsafePathError", "add", "build", "remove"]
