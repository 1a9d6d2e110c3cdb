"""Settings of the programs the examples start, for a test run: nothing here changes
what an example does or prints."""

from __future__ import annotations

import os

# Read by Ray when it is imported and by every Ray process started from the tests: no
# usage statistics sent from a test run, and no token files for a local Ray that only
# this machine reaches.
for name, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(name, value)
