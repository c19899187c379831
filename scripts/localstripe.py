#!/usr/bin/env python3
"""Serves localstripe (PyPI) on 127.0.0.1 only, for Syncflow's Stripe end-to-end tests.

localstripe's own entry point binds every interface and has no host flag, so this
starts its aiohttp application directly. It also turns off localstripe's habit of
pickling its whole store to /tmp after every write: that file is shared by every
instance on the machine and makes each write slower as data grows; the tests wipe
the data between scenarios anyway (DELETE /_config/data).

Usage: scripts/localstripe.py --port PORT
"""

import argparse
import os
import sys

# This file's own name would shadow the package: import from site-packages.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from aiohttp import web  # noqa: E402

import localstripe.resources  # noqa: E402
from localstripe.server import app  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    localstripe.resources.Store.dump_to_disk = lambda self: None
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
