"""Expiry warnings (pure): what ends, warned ahead, once a day, cleared when renewed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hotline.check.expiry import (
    DAY_S,
    ExpirySettings,
    ExpiryWatch,
    certificate_not_after,
    charter_item,
    key_age_item,
    next_expiry,
    tls_item,
    turn_item,
)
from hotline.errors import UsageError
from hotline.exchange.tls import CERT_FILE, CERT_VALIDITY_DAYS, create_certificate

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


def certificate(not_after: float) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hotline exchange")])
    end = dt.datetime.fromtimestamp(not_after, dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(end - dt.timedelta(days=365))
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_the_exchange_certificate_end_is_read_from_pem_and_der(tmp_path: Path) -> None:
    create_certificate(tmp_path / "exchange")
    pem = (tmp_path / "exchange" / CERT_FILE).read_bytes()
    end = certificate_not_after(pem)
    now = dt.datetime.now(dt.UTC).timestamp()
    assert abs(end - (now + CERT_VALIDITY_DAYS * DAY_S)) < 600
    der = certificate(T0 + 10 * DAY_S)
    assert certificate_not_after(der) == T0 + 10 * DAY_S
    with pytest.raises(UsageError):
        certificate_not_after(b"not a certificate")


def test_warned_ahead_once_a_day_until_renewed() -> None:
    watch = ExpiryWatch(ExpirySettings(warn_ahead_s=30 * DAY_S))
    cert = tls_item("wss://exchange:8443", certificate(T0 + 100 * DAY_S))
    assert watch.review([cert], T0).raised == []  # 100 days ahead: nothing yet
    first = watch.review([cert], T0 + 70 * DAY_S + 60)  # 30 days ahead: warned
    assert [w.item.key for w in first.raised] == [cert.key]
    assert "expires 2026-04-11" in first.raised[0].reason
    assert watch.review([cert], T0 + 70 * DAY_S + 3600).raised == []  # the same day: once
    again = watch.review([cert], T0 + 71 * DAY_S + 60)  # the next day: again
    assert again.raised and again.raised[0].count == 2
    late = watch.review([cert], T0 + 101 * DAY_S)
    assert "expired" in late.raised[0].reason
    renewed = tls_item("wss://exchange:8443", certificate(T0 + 500 * DAY_S))
    review = watch.review([renewed], T0 + 101 * DAY_S + 60)
    assert review.raised == [] and [w.item.key for w in review.cleared] == [cert.key]
    assert watch.warnings == {}


def test_key_age_charter_and_relay_credentials() -> None:
    settings = ExpirySettings(max_key_age_s=365 * DAY_S)
    key = key_age_item("alpha", T0, settings)
    assert key.expires_at == T0 + 365 * DAY_S and key.kind == "key_age"
    assert charter_item("east-west", 3, None) is None  # charter format 1 has no end
    charter = charter_item("east-west", 3, T0 + 40 * DAY_S)
    assert charter is not None
    relay = turn_item("turn:127.0.0.1:3478", T0, 86_400)
    assert relay.expires_at == T0 + 86_400 and relay.warn_ahead_s == 8640
    assert next_expiry([key, charter, relay]) == relay
    assert next_expiry([]) is None
    watch = ExpiryWatch(settings)
    # a relay credential is warned only a tenth of its life ahead, not 30 days
    assert watch.review([relay], T0 + 3600).raised == []
    assert [w.item for w in watch.review([relay], T0 + 80_000).raised] == [relay]
    assert relay.to_value(T0)["in_s"] == 86_400
    with pytest.raises(UsageError):
        ExpirySettings(warn_ahead_s=0)
