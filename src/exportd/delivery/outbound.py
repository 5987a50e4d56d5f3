"""Requests exportd sends on a project's behalf (webhooks): only to public addresses,
unless the server administrator allow-lists a network or host for trusted internal
receivers (`EXPORTD_WEBHOOK_ALLOW_NETWORKS`).

The check is made where the connection is opened: the host is resolved here, every
address it resolves to is checked, and the socket is connected to a checked address
(TLS still verifies and sends SNI for the name). A name that resolves to a public address
when the URL is submitted and to an internal one later (DNS rebinding) is refused then.
Redirects are never followed, proxies from the environment never used, and one delivery
has a total time budget, so a receiver that dribbles its answer cannot hold a thread."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import certifi
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# not covered by the `ipaddress` flags on every Python version: shared address space
# (CGNAT) and the IPv6 prefixes that carry an IPv4 address to a translator
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class RefusedByPolicy(Exception):
    """The destination is not a public address and not allow-listed: nothing was sent."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if any (mapped, 6to4, Teredo, NAT64),
    so `::ffff:127.0.0.1` is judged as 127.0.0.1."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Whether an address is a public unicast address: not loopback, private (RFC 1918,
    ULA), shared (CGNAT), link-local (cloud metadata), unspecified, multicast or reserved,
    also when written as an IPv6 form of such an IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # the IPv4 address itself is what is reached
            return is_public(ip.ipv4_mapped)
        inner = embedded_ipv4(ip)
        if inner is not None and not is_public(inner):
            return False
        if ip.scope_id:
            return False
    flagged = (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    )
    if flagged or ip in _CGNAT:
        return False
    return ip.is_global


@dataclass(frozen=True)
class OutboundPolicy:
    """Public addresses only, plus the networks and host names the administrator trusts."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> OutboundPolicy:
        """Entries are CIDRs or addresses (`10.1.0.0/16`, `127.0.0.1`, `::1`) or host
        names (`hooks.internal`, trusted whatever they resolve to)."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows(self, ip: IPAddress) -> bool:
        if any(_within(ip, net) for net in self.networks):
            return True
        return is_public(ip)

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`; every one must be allowed (a name with
        one internal address among public ones is refused as a whole)."""
        literal = _literal(host)
        if literal is not None:
            found = [literal]
        else:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if self.allows_host(host):
            return _unique(found)
        if not found or not all(self.allows(ip) for ip in found):
            raise RefusedByPolicy("refused by policy: the destination is not a public address")
        return _unique(found)


def _within(ip: IPAddress, net: IPNetwork) -> bool:
    if ip.version == net.version:
        return ip in net
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped in net
    return False


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unique(found: list[IPAddress]) -> list[str]:
    return list(dict.fromkeys(str(ip) for ip in found))


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes share one deadline for the whole delivery."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self.inner = inner
        self.deadline = deadline

    def _left(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise exc("the delivery's time budget is used up")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self.inner.start_tls(ssl_context, server_hostname, left), self.deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend that resolves and checks the host itself, then connects
    to a checked address; the name stays the TLS server name and the Host header."""

    def __init__(self, policy: OutboundPolicy, budget_seconds: float) -> None:
        self.policy = policy
        self.deadline = time.monotonic() + budget_seconds
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.policy.addresses(host, port)
        error: Exception | None = None
        for address in addresses:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("the delivery's time budget is used up")
            try:
                stream = self.inner.connect_tcp(
                    address,
                    port,
                    left if timeout is None else min(timeout, left),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self.deadline)
        assert error is not None  # addresses is never empty
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise RefusedByPolicy("refused by policy: Unix sockets are not a webhook destination")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over the guarded backend. httpx does not take a network backend
    (encode/httpx discussion 3180), so its connection pool is replaced by one built with
    it; no proxy from the environment, no HTTP/2."""

    def __init__(self, policy: OutboundPolicy, budget_seconds: float) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            max_connections=1,
            network_backend=GuardedBackend(policy, budget_seconds),
        )


def guarded_client(policy: OutboundPolicy, timeout: float) -> httpx.Client:
    """A client for one delivery: each operation waits at most `timeout`, the whole
    delivery at most twice that; redirects are not followed."""
    return httpx.Client(
        transport=GuardedTransport(policy, 2 * timeout),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
