"""Batch retrieval evaluation of an index against baselines (kNN accuracy, mAP, near-duplicates, speed).

The same as ``instdisc-search evaluate``; run ``python scripts/evaluate.py --help`` for the options.
"""

import sys

from instdisc.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
