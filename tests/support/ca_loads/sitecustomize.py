"""Logs every CA bundle load (``ssl.SSLContext.load_verify_locations``: what each new httpx client does) of a
process that has this folder first on its PYTHONPATH: one line with the process id per load, appended to the
file named by HXP_CA_LOAD_LOG. For tests/gateway/test_clients.py.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

_load = ssl.SSLContext.load_verify_locations


def _logged_load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
    with open(os.environ["HXP_CA_LOAD_LOG"], "a") as log:
        log.write(f"{os.getpid()}\n")
    _load(self, *args, **kwargs)


if os.environ.get("HXP_CA_LOAD_LOG"):
    ssl.SSLContext.load_verify_locations = _logged_load  # type: ignore[method-assign]
