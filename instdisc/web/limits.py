"""The app's limits and defaults, written once: the page, the Gradio API, the REST API and the
upload routes all read them from here, so they cannot drift apart."""

from __future__ import annotations

from index.batcher import MAX_BATCH as BATCHER_MAX_BATCH
from instdisc.images import MAX_PIXELS

ANY = "(any)"  # dropdown entry meaning "no filter"
MAX_K = 100
DEFAULT_K = 20
MAX_QUERY_MB = 10
MAX_QUERY_BYTES = MAX_QUERY_MB * 2**20  # per query image, checked by the handlers
MAX_UPLOAD = f"{MAX_QUERY_MB}mb"  # the same limit for Gradio's upload route (launch / mount max_file_size)
MAX_BATCH = BATCHER_MAX_BATCH  # images per /search_batch call: one batcher batch at most
CONCURRENCY = 32  # Gradio events running at once: they wait on the batcher, which gathers them into batches
__all__ = ["ANY", "CONCURRENCY", "DEFAULT_K", "MAX_BATCH", "MAX_K", "MAX_PIXELS", "MAX_QUERY_BYTES", "MAX_UPLOAD"]
