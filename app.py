"""Serve the search page (Gradio) and the REST API for an index.

The same as ``instdisc-search serve``; run ``python app.py --help`` for the options.
"""

import sys

from instdisc.commands.serve import main

if __name__ == "__main__":
    sys.exit(main())
