"""Find duplicate and near-duplicate groups in an index.

    python scripts/find_duplicates.py --index INDEX_DIR --out REPORT_DIR [--threshold auto|0.92] [--embedding native]

Writes groups.json, duplicates.csv (one row per file: group, keep/remove) and contact_sheet.png;
``auto`` calibrates the threshold on the index and prints it with its expected precision/recall;
``--embedding native`` scores pairs with the checkpoint at its native side, unwhitened, re-embedded
and cached.
See docs/explore.md.
"""

import sys

from instdisc.explore.cli import find_duplicates_main

if __name__ == "__main__":
    sys.exit(find_duplicates_main())
