"""Who may talk to the server, judged from a request's headers before any route runs.

A web page the user visits can make the browser send requests to a local server: a "simple"
cross-origin POST (``text/plain`` or form data, no preflight) would decode for it (CSRF), and a
page whose DNS name is rebound to 127.0.0.1 reads the answers (DNS rebinding). Three checks close
both: the ``Host`` header must name the bound address (or an ``--allowed-host``), a POST body
must be ``application/json`` (which a page cannot send cross-origin without a preflight), and a
request carrying a foreign ``Origin`` is refused unless ``--cors-origin`` lists it (then it
gets CORS headers, preflights included). The API key, when set, is checked after these.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

WILDCARDS = frozenset({"", "0.0.0.0", "::"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
API_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))  # printable ASCII, no space


def host_name(value: str) -> str | None:
    """The host part of a ``Host`` header: lowercased, without its port or IPv6 brackets;
    None when malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        rest = v[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return v[1:end]
    if v.count(":") == 1:
        v, port = v.split(":")
        if not port.isdigit():
            return None
    return v or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    return name in LOOPBACK_NAMES or (_is_ip(name) and ipaddress.ip_address(name).is_loopback)


def check_api_key(key: str) -> str | None:
    """What is wrong with an API key, or None: it must be printable ASCII without spaces,
    since clients send it in a header as bytes (a non-ASCII key could never match)."""
    if not key:
        return "the API key is empty"
    bad = next((c for c in key if c not in API_KEY_CHARS), None)
    if bad is not None:
        return (f"the API key must be printable ASCII without spaces (clients send it as "
                f"header bytes), got {bad!r}")
    return None


@dataclass(frozen=True)
class Access:
    """The Host names and browser origins the server accepts.

    ``bound``: the address given to ``--host``; ``allowed_hosts``: more Host names
    (``--allowed-host``; ``*`` accepts any); ``cors_origins``: origins whose pages may call
    the API (``--cors-origin``, e.g. ``http://localhost:3000``; ``*`` allows any)."""

    bound: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        bound = self.bound.strip("[]").lower()
        names = {bound, *(h.lower() for h in self.allowed_hosts)}
        if bound in WILDCARDS or _is_loopback(bound):
            names |= LOOPBACK_NAMES
        object.__setattr__(self, "names", frozenset(names))

    def host_ok(self, host: str | None) -> bool:
        """Whether a request's ``Host`` header names this server. A missing Host (HTTP/1.0,
        never a browser) passes; any IP literal passes on a wildcard bind (DNS rebinding
        needs a name)."""
        if host is None or "*" in self.names:
            return True
        name = host_name(host)
        if name is None:
            return False
        return name in self.names or (self.bound.strip("[]") in WILDCARDS and _is_ip(name))

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """Whether a request's ``Origin`` (sent by browsers) is its own server's or allowed."""
        if origin is None:
            return True
        if self.cors_allows(origin):
            return True
        if host is None:
            return False
        own = host.strip().lower()
        return origin.strip().lower() in (f"http://{own}", f"https://{own}")

    def cors_allows(self, origin: str) -> bool:
        """Whether ``--cors-origin`` lists ``origin`` (CORS headers are then sent)."""
        o = origin.strip().lower().rstrip("/")
        return any(c == "*" or c.lower().rstrip("/") == o for c in self.cors_origins)

    def cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """The CORS headers of a response to ``origin`` (none unless it is allowed)."""
        if origin is None or not self.cors_allows(origin):
            return []
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin")]


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type header is ``application/json`` (parameters allowed)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"
