"""The search web app: :mod:`instdisc.web.handlers` (searching, Gradio events) over
:mod:`instdisc.web.queries`, :mod:`instdisc.web.collection`, :mod:`instdisc.web.render` and
:mod:`instdisc.web.api`; the page (:mod:`instdisc.web.ui`) and the REST API (:mod:`instdisc.web.rest`)
served together by :mod:`instdisc.web.server`; limits in :mod:`instdisc.web.limits`.

``instdisc-search serve`` (:mod:`instdisc.commands.serve`, also ``app.py``) only parses arguments and wires
these together.
"""
