"""The outbound policy: which addresses a webhook may reach. Every form of an internal
address is refused unless the administrator allow-listed it."""

from __future__ import annotations

import ipaddress

import pytest

from exportd.delivery.outbound import OutboundPolicy, RefusedByPolicy, is_public
from exportd.settings import Settings

INTERNAL = [
    "127.0.0.1", "127.8.9.10", "::1",  # loopback
    "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",  # RFC 1918
    "100.64.0.1", "100.127.255.254",  # CGNAT (shared address space)
    "fc00::1", "fd12:3456::1",  # unique local
    "169.254.169.254", "169.254.0.1", "fe80::1",  # link-local, cloud metadata
    "0.0.0.0", "::",  # unspecified
    "224.0.0.1", "239.255.255.250", "ff02::1",  # multicast
    "240.0.0.1", "255.255.255.255", "192.0.2.1", "2001:db8::1",  # reserved, documentation
    "fec0::1",  # site-local (deprecated)
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:7f00:1::1", "2002:a9fe:a9fe::1",  # 6to4 of 127.0.0.1 and of the metadata address
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "100.128.0.1"]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(RefusedByPolicy):
        OutboundPolicy().addresses(address, 443)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))
    [allowed] = OutboundPolicy().addresses(address, 443)
    assert ipaddress.ip_address(allowed) == ipaddress.ip_address(address)


def test_names_are_judged_by_what_they_resolve_to() -> None:
    with pytest.raises(RefusedByPolicy):
        OutboundPolicy().addresses("localhost", 80)


def test_the_allow_list_admits_networks_and_hosts() -> None:
    policy = OutboundPolicy.from_entries(["127.0.0.0/8", "10.20.0.0/16", "hooks.internal"])
    assert policy.addresses("127.0.0.1", 80) == ["127.0.0.1"]
    assert policy.addresses("::ffff:127.0.0.1", 80) == ["::ffff:7f00:1"]
    assert policy.addresses("10.20.3.4", 80) == ["10.20.3.4"]
    assert policy.allows_host("HOOKS.internal.")
    for still_refused in ("10.21.0.1", "169.254.169.254", "::1"):
        with pytest.raises(RefusedByPolicy):
            policy.addresses(still_refused, 80)


def test_the_allow_list_setting_is_checked() -> None:
    s = Settings(webhook_allow_networks=["127.0.0.1/32", "::1", "hooks.internal"])
    assert s.webhook_allow_networks == ["127.0.0.1/32", "::1", "hooks.internal"]
    with pytest.raises(ValueError, match="neither a network"):
        Settings(webhook_allow_networks=["10.0.0.0/33"])
