"""Explore an index: duplicate groups, clusters, a 2-D map (results cached next to the index).

    python scripts/explore_index.py duplicates --index INDEX_DIR --out REPORT_DIR [--threshold auto|0.92]
    python scripts/explore_index.py clusters --index INDEX_DIR --out REPORT_DIR [--clusters auto|K]
    python scripts/explore_index.py map --index INDEX_DIR --out REPORT_DIR [--method pca|umap|tsne]

See docs/explore.md.
"""

import sys

from instdisc.explore.cli import explore_main

if __name__ == "__main__":
    sys.exit(explore_main())
