"""The search web app: :mod:`webapp.handlers` (searching, Gradio events) over :mod:`webapp.queries`,
:mod:`webapp.collection`, :mod:`webapp.render` and :mod:`webapp.api`; the page (:mod:`webapp.ui`) and the
REST API (:mod:`webapp.rest`) served together by :mod:`webapp.server`; limits in :mod:`webapp.limits`.

``app.py`` at the repository root only parses arguments and wires these together.
"""
