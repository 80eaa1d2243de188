"""The Gradio layout of the search app; all logic is in :mod:`instdisc.web.handlers`.

``build_demo(handlers)`` returns the :class:`gr.Blocks`: one function per tab (``_search_tab``,
``_api_tab``), so a new tab is one more function called inside the ``Blocks``. Serving it (with
the REST API, safety settings and upload limit) is :mod:`instdisc.web.server`'s job.
"""

from __future__ import annotations

import math

import gradio as gr

from .explore_tabs import add_explore_tabs
from .handlers import SearchHandlers
from .limits import ANY, DEFAULT_K
from .queries import QueryError

BASE_CSS = """
/* results and examples: a fixed number of columns that always fit, each tile an image with
   its caption (score, label, file name) underneath, scrolling inside a fixed height */
#results .grid-container, #examples .grid-container {
    grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
    grid-template-rows: none !important; grid-auto-rows: auto !important; gap: 8px !important;
}
#results .thumbnail-item, #examples .thumbnail-item {
    aspect-ratio: auto !important; height: auto !important; display: flex; flex-direction: column;
}
#results .thumbnail-item > img, #examples .thumbnail-item > img {
    aspect-ratio: 1 / 1; width: 100% !important; height: auto !important; object-fit: contain;
}
#results .caption-label, #examples .caption-label {
    position: static !important; max-width: 100% !important; white-space: normal; overflow-wrap: anywhere;
    font-size: 11px; line-height: 1.3; padding: 2px 3px; text-align: center; border: none;
    border-top: 1px solid var(--border-color-primary); border-radius: 0; opacity: 1 !important;
}
#examples .caption-label { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; font-size: 10px; }
#results .grid-wrap, #examples .grid-wrap { padding: 34px 6px 6px 6px !important; }
#results .grid-container, #examples .grid-container { padding-top: 0 !important; }
#status { min-height: 1.6em; }
#info { font-size: 13px; }
"""
# Tiny images (CIFAR's 32x32): thumbnails are already upscaled with NEAREST server-side; the
# browser must not smooth them again when it fits them to the grid (nor the query preview).
PIXELATED_CSS = """
#results img, #examples img, #query img { image-rendering: pixelated; }
#query img { width: 100%; height: 100%; object-fit: contain; }
"""

INTRO = ("Find the images of the collection that look most like a query. Upload, drag and drop, "
         "paste (Ctrl+V) or capture an image — or click an example. Click any result to search for more "
         "like it.")


def _api_doc(root_hint: str) -> str:
    return """
Both buttons below are also **API endpoints** (`/search` for one image, `/search_batch` for several),
callable with `gradio_client`:

```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")
res = client.predict(handle_file("cat.png"), 20, api_name="/search")
for score, label, path in zip(res["scores"], res["labels"], res["paths"]):
    print(f"{score:.3f} {label} {path}")
batch = client.predict([handle_file("a.png"), handle_file("b.jpg")], 10, api_name="/search_batch")
# batch["results"][i] is like res above, or {"query": ..., "error": ...} for a bad image
```
Paths in the answers are relative to the index's image root (ROOT). The same search is also a plain
REST endpoint, `POST /api/search` (multipart `image` or `image_base64`; documented at `/api/docs`).
""".replace("ROOT", root_hint)


def _search_tab(h: SearchHandlers, state: gr.State, columns: int) -> None:
    """Query (upload, paste, webcam), k, filters, examples, results and the model-and-index panel."""
    labels, folders = h.facts.labels(), h.facts.folders()

    def on_result_select(evt: gr.SelectData, state, k, label, folder, date_from, date_to, camera):
        return h.ui_select_result(evt.index, state, k, label, folder, date_from, date_to, camera)

    def on_example_select(evt: gr.SelectData, k, label, folder, date_from, date_to, camera):
        return h.ui_select_example(evt.index, k, label, folder, date_from, date_to, camera)

    with gr.Tab("Search"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                query = gr.Image(label="Query", sources=["upload", "clipboard", "webcam"], type="filepath",
                                 image_mode=None, format="png", height=240, elem_id="query")
                k = gr.Slider(1, h.max_k, value=DEFAULT_K, step=1, label="Number of results (k)", elem_id="k")
                with gr.Row():
                    label = gr.Dropdown([ANY, *labels], value=ANY, label="Label filter",
                                        interactive=bool(labels), elem_id="label-filter")
                    folder = gr.Dropdown([ANY, *folders], value=ANY, label="Folder filter",
                                         allow_custom_value=True, elem_id="folder-filter",
                                         info=None if folders else "type a folder, e.g. train/cat")
                date_from, date_to, camera = _photo_filters(h)
                example_items = h.tiles.examples(h.facts.example_ids())
                example_rows = max(1, math.ceil(len(example_items) / 5))
                examples = gr.Gallery(example_items, label="Examples from the collection — click to search",
                                      columns=5, height=50 + 82 * example_rows, allow_preview=False,
                                      interactive=False, format="png", object_fit="contain",
                                      elem_id="examples")
            with gr.Column(scale=3):
                status = gr.Markdown(h.ui_clear()[1], elem_id="status")
                results = gr.Gallery(label="Results — click one for more like it", columns=columns,
                                     height=640, allow_preview=False, interactive=False, format="png",
                                     object_fit="contain", elem_id="results", buttons=[])
        with gr.Accordion("Model and index", open=True):
            gr.Markdown(h.facts.info_markdown(), elem_id="info")

    ui = dict(api_visibility="private", show_progress="minimal", show_progress_on=[results])
    filters = [label, folder, date_from, date_to, camera]
    query.upload(h.ui_search, [query, k, *filters], [results, status, state], preprocess=False,
                 trigger_mode="always_last", **ui)
    query.clear(h.ui_clear, None, [results, status, state], **ui)
    # k: "change" also covers a number typed into the slider's box ("release" does not); dates on Enter / blur
    for comp, event in ((k, "change"), (label, "input"), (folder, "input"), (camera, "input"),
                        (date_from, "submit"), (date_to, "submit"), (date_from, "blur"), (date_to, "blur")):
        getattr(comp, event)(h.ui_refresh, [state, k, *filters], [results, status, state],
                             trigger_mode="always_last", **ui)
    results.select(on_result_select, [state, k, *filters], [query, results, status, state], **ui)
    examples.select(on_example_select, [k, *filters], [query, results, status, state], **ui)


def _photo_filters(h: SearchHandlers) -> tuple[gr.Textbox, gr.Textbox, gr.Dropdown]:
    """Date taken from / to and camera: the photo filters (EXIF date, else the file's time)."""
    cameras = h.facts.cameras()
    with gr.Row():
        date_from = gr.Textbox(label="Taken from", placeholder="YYYY[-MM[-DD]]", elem_id="date-from")
        date_to = gr.Textbox(label="Taken to (inclusive)", placeholder="YYYY[-MM[-DD]]", elem_id="date-to")
        camera = gr.Dropdown([ANY, *cameras], value=ANY, label="Camera", allow_custom_value=True,
                             interactive=True, elem_id="camera-filter")
    return date_from, date_to, camera


def _api_tab(h: SearchHandlers) -> None:
    """The named Gradio API endpoints with a form that runs them: /search and /search_batch (image, k, label,
    folder), and /search_filtered and /search_batch_filtered with date taken and camera after those."""
    labels, folders = h.facts.labels(), h.facts.folders()

    def search_api(image, k=DEFAULT_K, label=ANY, folder=ANY, date_from="", date_to="", camera=ANY):
        """Search the index with one image (filters: label, folder, date taken from / to, camera); returns
        {query, k, took_ms, ids, scores, paths, labels, splits, taken, cameras}."""
        try:
            return h.api_search(image, k, label, folder, date_from, date_to, camera)
        except QueryError as e:
            raise gr.Error(str(e)) from e

    def search_batch_api(images, k=DEFAULT_K, label=ANY, folder=ANY, date_from="", date_to="", camera=ANY):
        """Search with several images in one call.

        Returns {took_ms, results: [{query, ids, scores, paths, labels, splits, taken, cameras} | {query, error}]}."""
        try:
            return h.api_search_batch(images, k, label, folder, date_from, date_to, camera)
        except QueryError as e:
            raise gr.Error(str(e)) from e

    with gr.Tab("API / batch"):
        gr.Markdown(_api_doc(f"`{h.root}`"))
        with gr.Row():
            api_image = gr.Image(label="One image (/search)", sources=["upload", "clipboard"], type="filepath",
                                 image_mode=None, format="png", height=200)
            api_files = gr.File(label="Several images (/search_batch)", file_count="multiple",
                                file_types=["image", ".heic", ".heif", ".avif"], height=200)
        with gr.Row():
            api_k = gr.Slider(1, h.max_k, value=DEFAULT_K, step=1, label="k")
            api_label = gr.Dropdown([ANY, *labels], value=ANY, label="label", allow_custom_value=True)
            api_folder = gr.Dropdown([ANY, *folders], value=ANY, label="folder", allow_custom_value=True)
        api_date_from, api_date_to, api_camera = _photo_filters(h)
        with gr.Row():
            one_btn = gr.Button("Search one image", variant="primary")
            batch_btn = gr.Button("Search batch")
        api_out = gr.JSON(label="Answer")
        # the form's buttons run the endpoints with every filter; /search and /search_batch keep their
        # (image, k, label, folder) inputs for existing clients, on hidden triggers
        one_basic_btn = gr.Button(visible=False)
        batch_basic_btn = gr.Button(visible=False)
    basic = [api_k, api_label, api_folder]
    photo = [*basic, api_date_from, api_date_to, api_camera]
    one_btn.click(search_api, [api_image, *photo], api_out, api_name="search_filtered", preprocess=False)
    batch_btn.click(search_batch_api, [api_files, *photo], api_out, api_name="search_batch_filtered",
                    preprocess=False)
    one_basic_btn.click(search_api, [api_image, *basic], api_out, api_name="search", preprocess=False)
    batch_basic_btn.click(search_batch_api, [api_files, *basic], api_out, api_name="search_batch", preprocess=False)


def build_demo(h: SearchHandlers, title: str = "Image search") -> gr.Blocks:
    """The page: a title, then one tab per function; ``demo.app_css`` holds the CSS to serve it with."""
    small = h.facts.small_images()
    with gr.Blocks(title=title) as demo:
        state = gr.State(None)
        gr.Markdown(f"## {title}\n{INTRO}")
        _search_tab(h, state, columns=8 if small else 5)
        _api_tab(h)
        add_explore_tabs(h.index)
    demo.app_css = BASE_CSS + (PIXELATED_CSS if small else "")
    return demo
