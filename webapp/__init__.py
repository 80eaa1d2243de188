"""The search web app: handler logic (:mod:`webapp.handlers`) and the Gradio layout (:mod:`webapp.ui`).

``app.py`` at the repository root only parses arguments and wires these together.
"""
