"""``python -m mxisd_flask --config FILE`` runs the server (or any mxisd command)."""

from __future__ import annotations

import sys

from mxisd_flask.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
