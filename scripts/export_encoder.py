"""Export a trained encoder as a bundled encoder with its card, and record measured numbers on the card.

The same as ``instdisc-search export-encoder``; run ``python scripts/export_encoder.py --help`` for the options.
"""

import sys

from instdisc.commands.export_encoder import main

if __name__ == "__main__":
    sys.exit(main())
