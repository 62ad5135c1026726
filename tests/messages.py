"""Checks that an error message names what the request sent, without pinning the server's wording."""

from __future__ import annotations

import re


def mentions(message: str, token: str) -> bool:
    """``token`` appears in ``message`` as a whole word or number: "0" is not found in "1000" nor in
    "0.0", so a message that names the limit but not the value the request sent does not pass."""
    return re.search(rf"(?<!\w)(?<!\d\.){re.escape(token)}(?!\w)(?!\.\d)", message) is not None


def missing(message: str, tokens) -> list[str]:
    """The ``tokens`` (field names, values sent, limits) that ``message`` fails to mention."""
    return [t for t in tokens if not mentions(message, t)]
