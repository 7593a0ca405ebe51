"""Database URLs as they may be shown, logged or saved: passwords hidden, in URLs, in text that
quotes one, and anywhere in a JSON-like document. Light (SQLAlchemy's URL parser only), so
readers of recommendations and exports need not load Optuna."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

HIDDEN = "***"
"""What a hidden password is shown as (SQLAlchemy's own mark)."""


def display_url(url: str | None) -> str:
    """``url`` as it may be shown, logged or saved: a database URL with its password as ``***``.

    SQLAlchemy parses it (the parser that opens it, so what is hidden is what would be sent), also
    a ``?password=`` query. Journal paths and URLs without a password come back unchanged.
    """
    if not url or "://" not in url:
        return url or ""
    try:
        parsed = make_url(url)
    except ArgumentError:  # nothing SQLAlchemy opens: hide whatever precedes the host
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{HIDDEN}@{rest.rpartition('@')[2]}" if "@" in rest else url
    if parsed.password is None and "password" not in parsed.query:
        return url
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": HIDDEN})
    return parsed.render_as_string(hide_password=True)


def has_password(url: str | None) -> bool:
    """Whether ``url`` carries a password (that ``display_url`` hides)."""
    return display_url(url) != (url or "")


_TOKEN_GAPS = re.compile(r"(\s+|[`'\"<>])")


def hide_in_text(text: str, url: str | None = None) -> str:
    """``text`` with every URL in it shown by ``display_url``, and ``url``'s password (raw or
    decoded) nowhere: for messages that quote a URL or a driver's error about one."""
    if "://" in text:
        text = "".join(display_url(part) if "://" in part else part
                       for part in _TOKEN_GAPS.split(text))
    if url and has_password(url):
        userinfo = url.partition("://")[2].rpartition("@")[0]
        secrets = {userinfo.partition(":")[2]}  # as written (maybe %-encoded)
        try:
            parsed = make_url(url)
            secrets |= {parsed.password, parsed.query.get("password")}  # decoded
        except ArgumentError:
            pass
        for secret in sorted((s for s in secrets if isinstance(s, str) and s), key=len,
                             reverse=True):
            text = text.replace(secret, HIDDEN)
    return text


def hide_passwords(data: Any, where: str = "") -> tuple[Any, dict[str, str]]:
    """JSON-like ``data`` (dicts, lists, strings) with every URL's password hidden, and where one
    was (``key.key[0]`` -> the string as now shown): for files written before passwords were
    hidden at their source."""
    if isinstance(data, str):
        shown = hide_in_text(data)
        return shown, ({where or ".": shown} if shown != data else {})
    found: dict[str, str] = {}
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], places = hide_passwords(value, f"{where}.{key}" if where else str(key))
            found.update(places)
        return out, found
    if isinstance(data, list | tuple):
        items = []
        for i, value in enumerate(data):
            shown_value, places = hide_passwords(value, f"{where}[{i}]")
            items.append(shown_value)
            found.update(places)
        return items, found
    return data, found
