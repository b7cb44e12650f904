"""Which callback URLs are allowed, which addresses are refused, and how bodies are signed.

Deliveries to a real receiver (the deadline, retries, what a receiver sees) are in
tests/test_security.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress

import pytest

from config import ApiSettings
from sayit_actors.callbacks import blocked, check_url, sign, signing_key, target, webhook_signature
from sayit_actors.errors import CallbackNotAllowed

ALLOWED = ApiSettings(
    callback_hosts=("hooks.example", "127.0.0.1", "10.0.0.1", "169.254.169.254", "::1"),
    callback_secret="k",
    callback_ports=(80, 443, 8443),
)


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example/sayit", "http://HOOKS.example:8443/a?b=c", "http://hooks.example:80/hook"],
)
def test_allowed_hosts_pass(url: str) -> None:
    assert check_url(url, ALLOWED) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://localhost/hook", "allow-list"),
        ("http://hooks.example.evil.test/hook", "allow-list"),
        ("ftp://hooks.example/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("https://user:pass@hooks.example/hook", "credentials"),
        ("http://hooks.example:99999/hook", "malformed"),
        ("http://hooks.example/a b", "malformed"),
        ("http://hooks.example/caf\u00e9", "malformed"),
        ("https://hooks.example/" + "a" * 3000, "too long"),
        ("http://hooks.example:9000/hook", "port 9000"),
        ("https://hooks.example:22/hook", "port 22"),
        # Written as addresses on the allow-list, still refused: no lookup needed to know.
        ("http://127.0.0.1/hook", "not public"),
        ("http://10.0.0.1/hook", "not public"),
        ("http://169.254.169.254/latest/meta-data", "not public"),
        ("http://[::1]/hook", "not public"),
    ],
)
def test_other_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(CallbackNotAllowed, match=why):
        check_url(url, ALLOWED)


def test_private_addresses_pass_only_when_allowed() -> None:
    private = ApiSettings(**{**ALLOWED.__dict__, "callback_allow_private": True})
    assert check_url("http://10.0.0.1/hook", private) == "http://10.0.0.1/hook"
    assert target("http://[::1]:8443/h?x=1", private).host_header == "[::1]:8443"
    assert target("https://hooks.example/h?x=1", private).path == "/h?x=1"


def test_callbacks_off_without_hosts() -> None:
    with pytest.raises(CallbackNotAllowed, match="not enabled"):
        check_url("https://hooks.example/sayit", ApiSettings())


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
        "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1",
    ],
)  # fmt: skip
def test_addresses_that_are_not_public_are_blocked(address: str) -> None:
    assert blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_not_blocked(address: str) -> None:
    assert not blocked(ipaddress.ip_address(address))


def test_legacy_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"jobId": "x"}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign("k", body) != sign("other", body)


def test_standard_webhooks_signature() -> None:
    """The example of the Standard Webhooks specification, and a plain secret's UTF-8 bytes."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert webhook_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    assert signing_key(secret) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    plain = webhook_signature("plain-secret", "msg_1", 1, body)
    digest = hmac.new(b"plain-secret", b"msg_1.1." + body, hashlib.sha256).digest()
    assert plain == "v1," + base64.b64encode(digest).decode()
