"""What will expire or go stale, and the warnings ahead of it (pure: ``now`` passed in).

An idle line must not fail the day it is needed because something ran out meanwhile. The
terminal lists what it depends on that has an end (:class:`ExpiryItem`):

- ``tls_certificate``: the exchange's TLS certificate (its ``notAfter``), as presented to the
  terminal when it connected, or read from the exchange's own certificate file;
- ``key_age``: this terminal's identity key, older than the policy's maximum age. Neither the
  charter nor the key file records when a key was made, so the key file's modification time
  stands for it (a key file is written once, when the terminal is enrolled; re-keying
  writes a new file);
- ``charter``: the charter's end of validity, when it has one (charter format 1 has none);
- ``turn_credential``: a shared-secret (coturn ``use-auth-secret``) relay credential carries
  its expiry time in its user name; it is made afresh for every call, so what can run out is
  the credential of a call in progress (static credentials have no expiry).

:class:`ExpiryWatch` turns the list into warnings: an item whose end is nearer than its
warning lead (default 30 days) raises a warning, at most once per item per (UTC) day, and the
warning is cleared when the item is renewed (its end moves out of the lead) or disappears.
:func:`next_expiry` says what ends next, for the status screen.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509

from hotline.errors import UsageError

DAY_S = 86_400
#: how long before an end a warning is raised (unless the item says otherwise)
DEFAULT_WARN_AHEAD_S = 30 * DAY_S
#: identity keys older than this are due for replacement
DEFAULT_MAX_KEY_AGE_S = 2 * 365 * DAY_S

KIND_TLS = "tls_certificate"
KIND_KEY_AGE = "key_age"
KIND_CHARTER = "charter"
KIND_TURN = "turn_credential"


@dataclass(frozen=True)
class ExpirySettings:
    """How far ahead to warn, and how old a key may grow."""

    #: seconds before an end at which the warning is raised
    warn_ahead_s: float = DEFAULT_WARN_AHEAD_S
    #: an identity key older than this "expires" (is due for replacement)
    max_key_age_s: float = DEFAULT_MAX_KEY_AGE_S

    def __post_init__(self) -> None:
        if not self.warn_ahead_s > 0 or not self.max_key_age_s > 0:
            raise UsageError("expiry: warn_ahead_s and max_key_age_s must be positive")


@dataclass(frozen=True)
class ExpiryItem:
    """One thing that ends at ``expires_at`` (unix seconds)."""

    key: str  #: stable identity, e.g. ``tls_certificate:wss://exchange:8443``
    kind: str
    what: str  #: a line for an operator
    expires_at: float
    #: this item's own warning lead (None: the settings' ``warn_ahead_s``)
    warn_ahead_s: float | None = None

    def lead(self, settings: ExpirySettings) -> float:
        return settings.warn_ahead_s if self.warn_ahead_s is None else self.warn_ahead_s

    def to_value(self, now: float) -> dict[str, object]:
        return {
            "key": self.key,
            "kind": self.kind,
            "what": self.what,
            "expires_at": int(self.expires_at),
            "in_s": int(self.expires_at - now),
        }


@dataclass
class ExpiryWarning:
    """An open warning: raised ahead of ``item``'s end, re-raised once a day until renewed."""

    item: ExpiryItem
    since: float
    last_raised: float
    count: int = 1

    @property
    def reason(self) -> str:
        when = dt.datetime.fromtimestamp(self.item.expires_at, dt.UTC)
        verb = "expired" if self.last_raised >= self.item.expires_at else "expires"
        return f"{self.item.what} {verb} {when:%Y-%m-%d %H:%M} UTC"

    def to_value(self) -> dict[str, object]:
        return {
            "kind": "expiry",
            "item": self.item.key,
            "item_kind": self.item.kind,
            "expires_at": int(self.item.expires_at),
            "since": self.since,
            "raised_at": self.last_raised,
            "reason": self.reason,
            "count": self.count,
        }


# --- the items --------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def certificate_not_after(data: bytes) -> float:
    """The end of validity (unix seconds) of an X.509 certificate, PEM or DER."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise UsageError(f"not an X.509 certificate: {exc}") from exc
    return cert.not_valid_after_utc.timestamp()


def tls_item(where: str, certificate: bytes) -> ExpiryItem:
    """The exchange's certificate at ``where`` (a URL or a file)."""
    return ExpiryItem(
        key=f"{KIND_TLS}:{where}",
        kind=KIND_TLS,
        what=f"the exchange's TLS certificate ({where})",
        expires_at=certificate_not_after(certificate),
    )


def key_age_item(owner: str, created_at: float, settings: ExpirySettings) -> ExpiryItem:
    """``owner``'s identity key, made at ``created_at``: due at the policy's maximum age."""
    return ExpiryItem(
        key=f"{KIND_KEY_AGE}:{owner}",
        kind=KIND_KEY_AGE,
        what=f"the identity key of {owner} (maximum age {settings.max_key_age_s / DAY_S:g} days)",
        expires_at=created_at + settings.max_key_age_s,
    )


def charter_item(line_id: str, version: int, valid_until: float | None) -> ExpiryItem | None:
    """The charter's end of validity; None when it has none."""
    if valid_until is None:
        return None
    return ExpiryItem(
        key=f"{KIND_CHARTER}:{line_id}",
        kind=KIND_CHARTER,
        what=f"charter version {version} of line {line_id}",
        expires_at=valid_until,
    )


def turn_item(url: str, issued_at: float, ttl_s: float) -> ExpiryItem:
    """A shared-secret relay credential made at ``issued_at`` (a call's start): it ends
    ``ttl_s`` later, and is warned about a tenth of its lifetime ahead (at least a minute)."""
    return ExpiryItem(
        key=f"{KIND_TURN}:{url}",
        kind=KIND_TURN,
        what=f"the relay credential for {url} of the call in progress",
        expires_at=issued_at + ttl_s,
        warn_ahead_s=max(60.0, ttl_s / 10),
    )


def next_expiry(items: Iterable[ExpiryItem]) -> ExpiryItem | None:
    """What ends first."""
    return min(items, key=lambda i: (i.expires_at, i.key), default=None)


# --- the warnings -----------------------------------------------------------------------


@dataclass
class ExpiryReview:
    raised: list[ExpiryWarning] = field(default_factory=list)  #: new or repeated today
    cleared: list[ExpiryWarning] = field(default_factory=list)  #: renewed or gone


@dataclass
class ExpiryWatch:
    """Open warnings by item key; :meth:`review` with the current items."""

    settings: ExpirySettings = field(default_factory=ExpirySettings)
    warnings: dict[str, ExpiryWarning] = field(default_factory=dict)

    def review(self, items: Iterable[ExpiryItem], now: float) -> ExpiryReview:
        """Raise a warning for every item within its lead (once per UTC day each), clear
        those renewed or gone."""
        out = ExpiryReview()
        due: set[str] = set()
        for item in items:
            if item.expires_at - now > item.lead(self.settings):
                continue
            due.add(item.key)
            warning = self.warnings.get(item.key)
            if warning is None:
                warning = self.warnings[item.key] = ExpiryWarning(item, now, now)
                out.raised.append(warning)
            elif int(now // DAY_S) != int(warning.last_raised // DAY_S) or (
                warning.item.expires_at != item.expires_at
            ):
                warning.item, warning.last_raised = item, now
                warning.count += 1
                out.raised.append(warning)
        for key in [k for k in self.warnings if k not in due]:
            out.cleared.append(self.warnings.pop(key))
        return out
