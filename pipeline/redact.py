"""Secrets out of every output: one function, used by logs, CLI errors, dead letters and
the status view.

``redact(text, known)`` masks, with ``***``:

- the password of any URL (``postgresql://user:PASSWORD@host/db``);
- the value of any ``password=``, ``secret=``, ``token=`` style key (libpq key=value
  conninfo, ``?password=`` URL parameters, ``CTRADER_CLIENT_SECRET=`` lines, and quoted
  ``"clientSecret": "..."`` / ``accessToken: "..."`` pairs as JSON and protobuf text
  print them);
- every value in ``known`` (the database password, the cTrader client secret, access and
  refresh tokens) wherever it appears, also percent-encoded.

The patterns catch secrets nothing told the process about (a URL in an environment
variable of another service, say); the known values catch the ones a server or a
library echoes in a shape no pattern expects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs, quote, unquote, urlsplit

MASK = "***"
# Shorter values would mask ordinary words and digits; no real secret is that short.
MIN_KNOWN_LENGTH = 4

# scheme://user:PASSWORD@ -- the user part may be empty, the password may be empty.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*:)(?P<secret>[^\s@/'\"]+)(?=@)")
_SECRET_NAME = r"[\w.\-]*(?:password|passwd|pwd|secret|token)[\w.\-]*"
# key=value (conninfo, URL query, env lines): the value up to a separator or a quote;
# a quoted value whole.
_KEY_EQUALS = re.compile(
    rf"(?P<head>(?<![\w.\-]){_SECRET_NAME}\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"}\]]+)",
    re.IGNORECASE)
# "key": "value" and key: "value" (JSON, protobuf text format, Python reprs): only quoted
# values, so that "OA_AUTH_TOKEN_EXPIRED: access token expired" keeps its words.
_KEY_COLON = re.compile(
    rf"(?P<head>(?<![\w.\-])[\"']?{_SECRET_NAME}[\"']?\s*:\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")",
    re.IGNORECASE)


def _mask_quoted(match: re.Match[str]) -> str:
    value = match.group("secret")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return f"{match.group('head')}{value[0]}{MASK}{value[0]}"
    return f"{match.group('head')}{MASK}"


def redact(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every secret it shows replaced by ``***``."""
    if not text:
        return text
    for value in _variants(known):
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", text)
    text = _KEY_EQUALS.sub(_mask_quoted, text)
    return _KEY_COLON.sub(_mask_quoted, text)


def _variants(known: Iterable[str]) -> list[str]:
    out: set[str] = set()
    for value in known:
        if value and len(value) >= MIN_KNOWN_LENGTH:
            out.add(value)
            out.add(quote(value, safe=""))
    return sorted(out, key=len, reverse=True)  # a longer secret before its own substrings


def url_secrets(url: str) -> list[str]:
    """The password a libpq URL or key=value conninfo carries (none: ``[]``)."""
    out: list[str] = []
    if "://" in url:
        try:
            parts = urlsplit(url)
            password = parts.password
            query = parse_qs(parts.query)
        except ValueError:
            return out
        if password:
            out += [password, unquote(password)]
        out += query.get("password", [])
    else:
        for match in _KEY_EQUALS.finditer(url):
            value = match.group("secret").strip("'\"")
            if match.group("head").split("=")[0].strip().lower() == "password" and value:
                out.append(value)
    return out


class Redactor:
    """``redact`` with the secrets this process knows: fixed values, and sources asked
    at every call (credentials whose tokens are refreshed while the process runs)."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known = [v for v in known if v]
        self._sources: list[Callable[[], Iterable[str]]] = []

    def add(self, values: Iterable[str]) -> None:
        self._known.extend(v for v in values if v)

    def watch(self, source: Callable[[], Iterable[str]]) -> None:
        self._sources.append(source)

    def known(self) -> list[str]:
        values = list(self._known)
        for source in self._sources:
            values.extend(source())
        return values

    def __call__(self, text: str) -> str:
        return redact(text, self.known())
