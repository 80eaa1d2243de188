"""The search web app: :mod:`instdisc.web.handlers` (searching, Gradio events) over :mod:`instdisc.web.queries`,
:mod:`instdisc.web.collection`, :mod:`instdisc.web.render` and :mod:`instdisc.web.api`; the page (:mod:`instdisc.web.ui`) and the
REST API (:mod:`instdisc.web.rest`) served together by :mod:`instdisc.web.server`; limits in :mod:`instdisc.web.limits`.

``app.py`` at the repository root only parses arguments and wires these together.
"""
