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

A refusal is a 400 naming the rule; an image too large a 413.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse

from simclr_embed.service.errors import BadImage, PayloadTooLarge

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
        raise BadImage(f"cannot resolve {host}: {e.strerror}") from None
    return list(dict.fromkeys(i[4][0] for i in infos))


def is_public(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return not (a.is_private or a.is_loopback or a.is_link_local or a.is_multicast
                or a.is_reserved or a.is_unspecified)


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
        raise BadImage(f"host {host!r} resolves to {bad[0]}, a private, loopback, link-local "
                       "or multicast address: only a host listed by its exact name may")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout)
    sock = socket.create_connection((ips[0], port), timeout=timeout)
    if parts.scheme == "https":
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    conn.sock = sock  # http.client sends over it instead of resolving the name again
    return conn


def fetch_image(url: str, rules: list[str], max_bytes: int, timeout: float = 5.0) -> bytes:
    """The image at url, or BadImage / PayloadTooLarge saying which rule refused it."""
    deadline = time.monotonic() + 2 * timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        conn = connect(parts, rules, timeout)
        try:
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request("GET", target, headers={"User-Agent": "simclr-embed",
                                                 "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urllib.parse.urljoin(url, resp.getheader("Location"))
                continue  # checked again from the start
            if resp.status != 200:
                raise BadImage(f"{parts.hostname} answered {resp.status} for the image URL")
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise BadImage(f"the image URL returned {ctype or 'no content type'}, not "
                               "an image")
            return read_capped(resp, max_bytes, deadline)
        except (OSError, http.client.HTTPException) as e:
            raise BadImage(f"fetching the image URL failed: {type(e).__name__}: {e}") from None
        finally:
            conn.close()
    raise BadImage(f"the image URL redirected more than {MAX_REDIRECTS} times")


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
