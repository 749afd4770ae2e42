"""Serve the broker in one process with werkzeug's threaded server: `python -m … PORT`.

Settings come from the BROKER_* environment, like in production; a test SIGKILLs it at will.
"""

from __future__ import annotations

import sys

from werkzeug.serving import make_server

from broker import create_app


def main() -> None:
    """Serve on 127.0.0.1:PORT until killed."""
    make_server("127.0.0.1", int(sys.argv[1]), create_app(), threaded=True).serve_forever()


if __name__ == "__main__":
    main()
