"""``python -m lifecycle.local.samba``: the command line (lifecycle.local.samba.cli)."""

from __future__ import annotations

import sys

from lifecycle.local.samba.cli import main

if __name__ == "__main__":
    sys.exit(main())
