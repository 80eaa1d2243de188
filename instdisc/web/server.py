"""One process serving the Gradio page and the REST API over the same :class:`SearchHandlers`.

``make_app(h)`` is a FastAPI app holding the REST routes (:mod:`instdisc.web.rest`) with the page
mounted at ``/`` (``gr.mount_gradio_app``) and the app's safety settings (:func:`gradio_settings`:
files served only from the index's image root, upload size limit). ``launch`` serves it with
uvicorn on 127.0.0.1 unless told otherwise; ``--share`` needs Gradio's own server (its relay
tunnel), so that path runs ``Blocks.launch`` with the same settings and without the REST routes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import gradio as gr
import uvicorn
from fastapi import FastAPI

from .handlers import SearchHandlers
from .limits import CONCURRENCY, MAX_UPLOAD
from .rest import rest_app
from .ui import build_demo

STARTUP_TIMEOUT_S = 60.0


def gradio_settings(h: SearchHandlers) -> dict:
    """What both serving paths pass to Gradio: only the image root is served, uploads are capped."""
    return {"allowed_paths": [str(h.root)], "max_file_size": MAX_UPLOAD, "show_error": True, "footer_links": ["api"]}


def _demo(h: SearchHandlers) -> gr.Blocks:
    demo = build_demo(h)
    # requests in flight wait on the shared batcher, which gathers them: let enough run at once
    demo.queue(default_concurrency_limit=CONCURRENCY)
    return demo


def make_app(h: SearchHandlers) -> FastAPI:
    """REST API at /api plus the Gradio page at /, one FastAPI app."""
    app = rest_app(h)
    demo = _demo(h)
    return gr.mount_gradio_app(app, demo, path="/", css=demo.app_css, **gradio_settings(h))


@contextlib.contextmanager
def serving(h: SearchHandlers, host: str = "127.0.0.1", port: int = 7860) -> Iterator[str]:
    """Serve :func:`make_app` in a background thread; yields its URL, stops it afterwards (tests, tools)."""
    server = uvicorn.Server(uvicorn.Config(make_app(h), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="app-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the app did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def launch(h: SearchHandlers, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           quiet: bool = False) -> None:
    """Serve the page and the REST API until interrupted (``share``: the page only, through Gradio's relay)."""
    if share:
        demo = _demo(h)
        demo.launch(server_name=host, server_port=port, share=True, css=demo.app_css, quiet=quiet,
                    **gradio_settings(h))
        return
    if not quiet:
        print(f"serving on http://{host}:{port}/ (REST API: http://{host}:{port}/api/docs)", flush=True)
    uvicorn.run(make_app(h), host=host, port=port or 7860, log_level="warning")
