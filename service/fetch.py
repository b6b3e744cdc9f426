"""Images by http(s) URL, wherever an image may be a string: off unless SIMCLR_EMBED_FETCH_HOSTS
lists the hosts, and then fetched as an SSRF-wary client must (the holes other servers had:
vLLM CVE-2025-6242, infinity's bare GET):

- the host must match the list: an exact name, or a `.suffix` for its subdomains;
- every address it resolves to must be public (not private, loopback, link-local, multicast,
  reserved) unless the host is listed by its exact name; the connection goes to the address
  that was checked (no second lookup for a DNS rebind to exploit);
- each redirect is checked again from the start, at most MAX_REDIRECTS;
- no credentials: a URL with user:password is refused, no cookies or auth headers are sent;
- a timeout per socket operation and a deadline for the whole fetch (a slow drip is refused),
  a byte cap (the request body limit), and an image content type.

A refusal is a 400 naming the rule; an image too large a 413; a server that cannot be reached
(refused, TLS, timeout, DNS) a 502 naming the host and the cause. Every socket is closed on
every path.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse

from simclr_embed.service.errors import BadImage, FetchFailed, PayloadTooLarge

MAX_REDIRECTS = 3
CHUNK = 64 * 1024


def host_rule(host: str, rules: list[str]) -> str | None:
    """'exact', 'suffix' or None: how the host is listed."""
    host = host.lower().rstrip(".")
    if host in rules:
        return "exact"
    if any(r.startswith(".") and host.endswith(r) for r in rules):
        return "suffix"
    return None


def addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchFailed(f"{host}: DNS lookup failed ({e.strerror})") from None
    return list(dict.fromkeys(str(i[4][0]) for i in infos))


def is_public(ip: str) -> bool:
    """Globally reachable unicast: `is_global` follows IANA's special-purpose registries
    (100.64/10 shared space with cloud metadata at 100.100.100.200, 192.0.0/24, 198.18/15,
    ...), which a hand-made list of private ranges missed; multicast is global but no host."""
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_global and not a.is_multicast


def cause(e: BaseException) -> str:
    """What went wrong reaching a server, in words an operator can act on."""
    if isinstance(e, ssl.SSLError):
        return f"TLS failed ({getattr(e, 'reason', None) or e})"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.HTTPException):
        return f"no valid HTTP answer ({type(e).__name__})"
    return getattr(e, "strerror", None) or type(e).__name__


def connect(parts: urllib.parse.SplitResult, rules: list[str], timeout: float
            ) -> http.client.HTTPConnection:
    """A connection to a checked address of the URL's host, TLS verified against the name."""
    if parts.scheme not in ("http", "https"):
        raise BadImage(f"image URLs must be http or https, not {parts.scheme!r}")
    if parts.username or parts.password:
        raise BadImage("image URLs must not carry credentials (user:password@)")
    host = parts.hostname or ""
    rule = host_rule(host, rules)
    if rule is None:
        raise BadImage(f"host {host!r} is not in SIMCLR_EMBED_FETCH_HOSTS")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ips = addresses(host, port)
    if rule != "exact" and (bad := [ip for ip in ips if not is_public(ip)]):
        raise BadImage(f"host {host!r} resolves to {bad[0]}, not a globally reachable "
                       "address (private, shared, loopback, link-local, multicast or "
                       "reserved): only a host listed by its exact name may")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout)
    sock = socket.create_connection((ips[0], port), timeout=timeout)
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    conn.sock = sock  # http.client sends over it instead of resolving the name again
    return conn


def fetch_image(url: str, rules: list[str], max_bytes: int, timeout: float = 5.0) -> bytes:
    """The image at url; BadImage / PayloadTooLarge naming the rule that refused it, or
    FetchFailed naming the host and why it could not be reached."""
    deadline = time.monotonic() + 2 * timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        try:
            location = _get(parts, rules, timeout, max_bytes, deadline)
            if isinstance(location, bytes):
                return location
        except (OSError, http.client.HTTPException) as e:
            raise FetchFailed(f"fetching the image URL from {parts.hostname} failed: "
                              f"{cause(e)}") from None
        url = urllib.parse.urljoin(url, location)  # checked again from the start
    raise BadImage(f"the image URL redirected more than {MAX_REDIRECTS} times")


def _get(parts: urllib.parse.SplitResult, rules: list[str], timeout: float, max_bytes: int,
         deadline: float) -> bytes | str:
    """One GET: the image's bytes, or the Location a redirect points to."""
    conn = connect(parts, rules, timeout)
    try:
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.request("GET", target, headers={"User-Agent": "simclr-embed",
                                             "Accept": "image/*"})
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            return resp.getheader("Location") or ""
        if resp.status != 200:
            raise BadImage(f"{parts.hostname} answered {resp.status} for the image URL")
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise BadImage(f"the image URL returned {ctype or 'no content type'}, not an image")
        return read_capped(resp, max_bytes, deadline)
    finally:
        conn.close()


def read_capped(resp: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    length = resp.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"the image URL's body is {length} bytes, over the {max_bytes} "
                              "byte limit")
    body = bytearray()
    while chunk := resp.read1(CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the image URL's body is over the {max_bytes} byte limit")
        if time.monotonic() > deadline:
            raise BadImage("the image URL's server sent its body too slowly")
    return bytes(body)
