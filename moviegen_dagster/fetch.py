"""Fetching URL inputs (storyboards, references, voice profiles) without opening an SSRF hole.

Rules: http(s) only; every address a name resolves to must be public unless the host or the
address is in MOVIEGEN_URL_ALLOWLIST; the connection goes to the address that was checked
(pinned, so a name that re-resolves to loopback between check and use gains nothing);
redirects are followed by hand, each hop checked again; size and time are capped.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(ValueError):
    """A URL input could not be fetched safely; the message names the input."""


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks that may be private (tests, an internal asset server)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Allowlist:
        """Parse "assets.internal,127.0.0.1,10.0.0.0/8"."""
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for item in filter(None, (p.strip().lower() for p in spec.split(","))):
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.strip("[]"))
        return cls(frozenset(hosts), tuple(nets))

    def allows(self, host: str, addr: IPAddress) -> bool:
        """Whether a private address is acceptable for this host."""
        return host.lower() in self.hosts or any(addr in n for n in self.networks)


@dataclass(frozen=True)
class Fetched:
    """A fetched body and what the server said it is."""

    url: str
    content: bytes
    content_type: str


def is_public(addr: IPAddress) -> bool:
    """Globally routable unicast only (no loopback, private, link-local, metadata, ...)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return is_public(addr.ipv4_mapped)
    return addr.is_global and not addr.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the name resolves to (numeric forms like 0x7f000001 included)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve host {host!r}") from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def check_url(url: str, allowlist: Allowlist, what: str) -> tuple[str, int, IPAddress]:
    """Validate scheme and destination; returns (host, port, the address to connect to)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"{what}: only http and https URLs are accepted, got {parts.scheme!r}")
    if not parts.hostname:
        raise FetchError(f"{what}: URL has no host")
    if parts.username or parts.password:
        raise FetchError(f"{what}: URLs with credentials are not accepted")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addrs = resolve(host, port)
    refused = [a for a in addrs if not is_public(a) and not allowlist.allows(host, a)]
    if refused or not addrs:
        raise FetchError(f"{what}: {host} resolves to a non-public address ({refused[0]})")
    return host, port, addrs[0]


def check_url_static(url: str, allowlist: Allowlist, what: str) -> None:
    """Checks that need no DNS (used at submit time): scheme, credentials, literal addresses.

    Names are resolved and checked again at every use, where the answer counts.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"{what}: only http and https URLs are accepted, got {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise FetchError(f"{what}: URL has no host")
    if parts.username or parts.password:
        raise FetchError(f"{what}: URLs with credentials are not accepted")
    addr: IPAddress | None = None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        try:  # legacy numeric forms such as 0x7f000001 or 2130706433
            addr = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            addr = None
    if host == "localhost" or host.endswith(".localhost"):
        addr = ipaddress.ip_address("127.0.0.1")
    if addr is not None and not is_public(addr) and not allowlist.allows(host, addr):
        raise FetchError(f"{what}: {host} is not a public address")


def fetch(
    url: str,
    what: str,
    allowlist: Allowlist,
    max_bytes: int,
    timeout: float = 30.0,
    accept: Iterable[str] = (),
    max_redirects: int = 3,
) -> Fetched:
    """GET a URL under the rules above; `accept` lists allowed content-type prefixes."""
    deadline = time.monotonic() + timeout
    accept = tuple(accept)
    for _ in range(max_redirects + 1):
        host, port, addr = check_url(url, allowlist, what)
        parts = urlsplit(url)
        netloc = f"[{addr}]" if addr.version == 6 else str(addr)
        pinned = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"{what}: timed out after {timeout:.0f}s")
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": ", ".join(accept) or "*/*"}
        try:
            with (
                httpx.Client(timeout=min(remaining, 10.0), follow_redirects=False) as client,
                client.stream(
                    "GET", pinned, headers=headers, extensions={"sni_hostname": host}
                ) as resp,
            ):
                if resp.is_redirect:
                    location = resp.headers.get("location", "")
                    url = urljoin(url, location)
                    continue
                if resp.status_code != 200:
                    raise FetchError(f"{what}: {url} answered HTTP {resp.status_code}")
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if accept and not ctype.startswith(accept):
                    raise FetchError(f"{what}: unexpected content type {ctype or 'none'!r}")
                declared = int(resp.headers.get("content-length") or 0)
                if declared > max_bytes:
                    raise FetchError(f"{what}: {declared} bytes is over the {max_bytes} limit")
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body.extend(chunk)
                    if len(body) > max_bytes:
                        raise FetchError(f"{what}: more than {max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError(f"{what}: timed out after {timeout:.0f}s")
                return Fetched(url=url, content=bytes(body), content_type=ctype)
        except httpx.TimeoutException as exc:
            raise FetchError(f"{what}: timed out fetching {url}") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"{what}: could not fetch {url}: {type(exc).__name__}") from exc
    raise FetchError(f"{what}: more than {max_redirects} redirects")
