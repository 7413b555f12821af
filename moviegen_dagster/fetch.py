"""Fetching URL inputs (storyboards, references, voice profiles) without opening an SSRF hole.

Rules: http(s) only; every address a name resolves to must be public unless the host or the
address is in MOVIEGEN_URL_ALLOWLIST; the connection goes to the address that was checked
(pinned, so a name that re-resolves to loopback between check and use gains nothing);
redirects are followed by hand, each hop checked again; size and time are capped.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
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


# IPv6 ranges that embed an IPv4 address a gateway may forward to: NAT64 (64:ff9b::/96 and
# 64:ff9b:1::/48) and the deprecated IPv4-compatible form (::a.b.c.d). 6to4 and Teredo are
# decoded by ipaddress itself.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address may be translated to on the way out."""
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    if addr in _V4_COMPATIBLE or any(addr in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def is_public(addr: IPAddress) -> bool:
    """Globally routable unicast only (no loopback, private, link-local, metadata, ...)."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return is_public(addr.ipv4_mapped)
        if not all(is_public(v4) for v4 in _embedded_ipv4(addr)):
            return False
    return addr.is_global and not addr.is_multicast


# What a host may contain once IDNA-normalised: DNS names and IP literals, nothing that a
# resolver or a URL parser downstream could read differently (%, spaces, NUL, backslashes).
_HOST_CHARS = re.compile(r"[a-z0-9._:-]+")


def normalize_host(host: str, what: str) -> str:
    """The ASCII host a resolver sees: IDNA-mapped (fullwidth and look-alike dots folded),
    lower case, without the trailing root dot; refuses anything that is not a plain host."""
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise FetchError(f"{what}: invalid host name") from exc
    ascii_host = ascii_host.removesuffix(".")
    if not ascii_host or not _HOST_CHARS.fullmatch(ascii_host) or ".." in ascii_host:
        raise FetchError(f"{what}: invalid host name")
    return ascii_host


def _literal_address(host: str) -> IPAddress | None:
    """The address an IP literal names, legacy IPv4 forms (0x7f000001, 2130706433,
    0177.0.0.1, 127.1) included; None for a DNS name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class _Target:
    """A URL's parts after the static checks."""

    scheme: str
    host: str
    port: int
    path: str
    query: str
    netloc: str


def _split(url: str, what: str) -> _Target:
    """Scheme, credentials and host checks that need no DNS."""
    try:
        parts = urlsplit(url)
        raw_host = parts.hostname
        port = parts.port
    except ValueError as exc:  # bad brackets, out-of-range or non-numeric port
        raise FetchError(f"{what}: malformed URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"{what}: only http and https URLs are accepted, got {parts.scheme!r}")
    if not raw_host:
        raise FetchError(f"{what}: URL has no host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise FetchError(f"{what}: URLs with credentials are not accepted")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise FetchError(f"{what}: URL contains control characters")
    host = normalize_host(raw_host, what)
    port = port or (443 if parts.scheme == "https" else 80)
    return _Target(parts.scheme, host, port, parts.path, parts.query, parts.netloc)


def check_url_syntax(url: str, what: str) -> str:
    """Scheme, credentials, control characters and host form only; returns the ASCII host.

    For URL inputs at submit time: their destinations are checked where they are fetched.
    """
    return _split(url, what).host


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the name resolves to (numeric forms like 0x7f000001 included)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # gaierror, and names the codec cannot encode
        raise FetchError(f"cannot resolve host {host!r}") from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


Resolver = Callable[[str, int], list[IPAddress]]


def check_url(
    url: str, allowlist: Allowlist, what: str, resolver: Resolver | None = None
) -> tuple[str, int, IPAddress]:
    """Validate scheme and destination; returns (host, port, the address to connect to)."""
    target = _split(url, what)
    host, port = target.host, target.port
    literal = _literal_address(host)
    try:
        addrs = [literal] if literal is not None else (resolver or resolve)(host, port)
    except FetchError as exc:
        raise FetchError(f"{what}: {exc}") from exc
    refused = [a for a in addrs if not is_public(a) and not allowlist.allows(host, a)]
    if refused or not addrs:
        shown = refused[0] if refused else "none"
        raise FetchError(f"{what}: {host} resolves to a non-public address ({shown})")
    return host, port, addrs[0]


def check_url_static(url: str, allowlist: Allowlist, what: str) -> None:
    """Checks that need no DNS (used at submit time): scheme, credentials, literal addresses.

    Names are resolved and checked again at every use, where the answer counts.
    """
    host = _split(url, what).host
    addr = _literal_address(host)
    if host == "localhost" or host.endswith(".localhost"):
        addr = ipaddress.ip_address("127.0.0.1")
    if addr is not None and not is_public(addr) and not allowlist.allows(host, addr):
        raise FetchError(f"{what}: {host} is not a public address")


class Deadline:
    """A hard wall-clock limit on everything sent and received over one connection.

    httpx's timeouts apply per socket operation, so a server dripping a byte every few seconds
    would never trip them; a timer shuts the socket down when the whole budget is spent.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed: nothing left to stop
            sock.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            self._shut(sock)

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: remember each connected socket (shut at once when late)."""
        if name != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            late = self.expired
        if late:
            self._shut(sock)

    @contextmanager
    def running(self) -> Iterator[Deadline]:
        """Arm the timer for the duration of the block."""
        self._timer.start()
        try:
            yield self
        finally:
            self._timer.cancel()


def fetch(
    url: str,
    what: str,
    allowlist: Allowlist,
    max_bytes: int,
    timeout: float = 30.0,
    accept: Iterable[str] = (),
    max_redirects: int = 3,
    resolver: Resolver | None = None,
) -> Fetched:
    """GET a URL under the rules above; `accept` lists allowed content-type prefixes.

    `timeout` bounds the whole fetch, redirects included; `resolver` replaces DNS (tests).
    """
    accept = tuple(accept)
    with Deadline(timeout).running() as deadline:
        try:
            return _fetch(
                url, what, allowlist, max_bytes, accept, max_redirects, resolver, deadline
            )
        except (httpx.HTTPError, OSError) as exc:
            if deadline.expired:
                raise FetchError(f"{what}: timed out after {timeout:g}s") from exc
            if isinstance(exc, httpx.TimeoutException):
                raise FetchError(f"{what}: timed out fetching {url}") from exc
            raise FetchError(f"{what}: could not fetch {url}: {type(exc).__name__}") from exc


def _fetch(
    url: str,
    what: str,
    allowlist: Allowlist,
    max_bytes: int,
    accept: tuple[str, ...],
    max_redirects: int,
    resolver: Resolver | None,
    deadline: Deadline,
) -> Fetched:
    started = time.monotonic()
    timeout = deadline.seconds
    for _ in range(max_redirects + 1):
        host, port, addr = check_url(url, allowlist, what, resolver)
        target = _split(url, what)
        netloc = f"[{addr}]" if addr.version == 6 else str(addr)
        pinned = urlunsplit(
            (target.scheme, f"{netloc}:{port}", target.path or "/", target.query, "")
        )
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0 or deadline.expired:
            raise FetchError(f"{what}: timed out after {timeout:g}s")
        headers = {
            "Host": target.netloc,
            "Accept": ", ".join(accept) or "*/*",
            "Accept-Encoding": "identity",
        }
        # trust_env=False: a proxy from the environment would bypass the pinned address.
        with (
            httpx.Client(
                timeout=min(remaining, 10.0), follow_redirects=False, trust_env=False
            ) as client,
            client.stream(
                "GET",
                pinned,
                headers=headers,
                extensions={"sni_hostname": host, "trace": deadline.trace},
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
            encoding = resp.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                # Asked for identity: a compressed answer could inflate far past the size cap.
                raise FetchError(f"{what}: compressed responses are not accepted ({encoding})")
            try:
                declared = int(resp.headers.get("content-length") or 0)
            except ValueError:
                raise FetchError(f"{what}: invalid Content-Length") from None
            if declared > max_bytes:
                raise FetchError(f"{what}: {declared} bytes is over the {max_bytes} limit")
            body = bytearray()
            for chunk in resp.iter_raw():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise FetchError(f"{what}: more than {max_bytes} bytes")
                if deadline.expired:
                    raise FetchError(f"{what}: timed out after {timeout:g}s")
            # A socket shut by the deadline reads as a clean end of a body without length.
            if deadline.expired:
                raise FetchError(f"{what}: timed out after {timeout:g}s")
            return Fetched(url=url, content=bytes(body), content_type=ctype)
    raise FetchError(f"{what}: more than {max_redirects} redirects")
