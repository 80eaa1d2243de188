"""Train an instance-discrimination encoder on a folder, an archive or CIFAR-10, without labels.

The same as ``instdisc-search train``; run ``python scripts/train.py --help`` for the options.
"""

import sys

from instdisc.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
