"""``python -m instdisc``: the same as the ``instdisc-search`` console command."""

import sys

from instdisc.commands import main

sys.exit(main())
