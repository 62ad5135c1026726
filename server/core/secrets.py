"""Passwords out of text meant for people: connection URLs and conninfo strings as logs and errors show them.

One function, used wherever a catalogue URL (or an error quoting one) is logged or raised, so every
form a password can take is masked in one place. Only the standard library: the clients may use it too.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# scheme://user:PASSWORD@host: the userinfo ends at the authority's last "@" (a raw "@" in a password
# is a common slip), and the authority at the first "/" or whitespace.
_USERINFO = re.compile(r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)(?P<secret>[^\s/]*)@")
# password=... as a URL query parameter (ends at "&" or "#") or a libpq conninfo pair (ends at
# whitespace; a quoted value may hold spaces and backslash escapes). sslpassword is libpq's key for
# the client key's passphrase; the others are what people name secrets in URLs.
_KEYS = r"password|sslpassword|passwd|pwd|secret|token"
_PAIR = re.compile(
    rf"(?P<keep>(?<![A-Za-z0-9_])(?:{_KEYS})\s*=\s*)(?P<secret>'(?:\\.|[^'\\])*'?|[^\s&#]*)",
    re.IGNORECASE,
)


def _secrets(source: str) -> list[str]:
    """The password values ``source`` holds, as written and percent-decoded, longest first."""
    found = [m.group("secret") for m in (*_USERINFO.finditer(source), *_PAIR.finditer(source))]
    values = {v for s in found for v in (s, s.strip("'"), unquote(s.strip("'"))) if v}
    return sorted(values, key=len, reverse=True)


def redact(text: str, source: str | None = None) -> str:
    """``text`` with every password masked as ``***``.

    Masks the userinfo form (``postgresql://user:PASSWORD@host/db``), ``password=`` query parameters
    (``...?sslmode=require&password=PASSWORD``) and libpq key=value pairs (``host=h password=PASSWORD``,
    quoted values included). With ``source``, the URL or conninfo string ``text`` may quote, every
    occurrence of ``source``'s passwords is masked too, in any context: libpq quotes a token it could
    not parse (``invalid percent-encoded token: "PASSWORD"``) with nothing around it to recognise.

    Args:
        text: a URL, a conninfo string, or a message that may quote one.
        source: the connection string behind ``text`` (None: only the recognisable forms are masked).

    Returns:
        The text, safe to log or raise.
    """
    if source:
        for secret in _secrets(source):
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group('keep')}{MASK}@", text)
    return _PAIR.sub(lambda m: f"{m.group('keep')}{MASK}" if m.group("secret") else m.group(0), text)
