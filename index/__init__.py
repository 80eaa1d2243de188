"""Nearest-neighbour index over instance-discrimination embeddings: FAISS + SQLite metadata, or a Milvus collection.

Build with ``scripts/build_index.py`` (or :func:`index.build.build`), search and read with
:class:`index.search.SearchIndex`; :class:`index.manifest.Manifest` describes a folder. See docs/index.md.
"""

from .build import BuildOptions, add, build, remove
from .errors import IndexDirError, UnsafePathError
from .manifest import Manifest
from .search import Hit, SearchIndex

__all__ = ["BuildOptions", "Hit", "IndexDirError", "Manifest", "SearchIndex", "UnsafePathError", "add", "build",
           "remove"]
