"""The one exception tree of Hotline.

Every error the package raises on purpose derives from :class:`HotlineError`. Foreign
exceptions (cryptography, aiohttp, aiortc, sqlite3, OSError) are translated into this tree
at the boundary where they occur. Each class says *what* went wrong; the three middle
classes say *whose fault* it was::

    HotlineError
    ├── LocalError                 we (or our operator) did something wrong
    │   ├── UsageError             bad command-line input or API misuse
    │   ├── KeyStorageError        a key file is missing, unreadable, or has unsafe permissions
    │   │   └── PassphraseError    wrong or missing passphrase for an encrypted key
    │   ├── StateError             an operation is illegal in the current state
    │   └── CounterExhausted       a nonce counter would wrap (SFrame, envelope sequence)
    ├── RemoteError                a peer terminal or site sent something we refuse
    │   ├── EncodingError          bytes that are not valid canonical encoding
    │   ├── SignatureError         a signature does not verify
    │   ├── CharterError           a charter is malformed, incomplete, or not acceptable
    │   │   ├── CharterIncomplete  a site's signature is missing
    │   │   ├── CharterRollback    a version lower than one already seen
    │   │   └── UnknownMember      a site or terminal not in the charter
    │   ├── EnvelopeError          a signed envelope is malformed, forged, replayed or misrouted
    │   │   └── ReplayError        a duplicate or out-of-order sequence number
    │   ├── E2EEError              the end-to-end encryption layer refuses something
    │   │   ├── SFrameError        an SFrame ciphertext is refused (see e2ee.sframe)
    │   │   └── KeyAgreementError  a key bundle, ephemeral key, roster or ack is refused
    │   ├── CallError              the call protocol was broken by the peer
    │   └── LogIntegrityError      a call log entry was changed, removed or reordered
    ├── ExchangeError              the exchange (untrusted) refused, failed or misbehaved
    │   ├── AuthenticationError    the exchange did not admit us
    │   ├── LimitExceeded          a configured limit was hit (size, rate, queue)
    │   └── ExchangeUnavailable    the exchange cannot be reached
    └── SfuError                   the SFU (untrusted, like the exchange) refused or misbehaved
        ├── JanusError             Janus answered with an error (its code and reason)
        ├── SfuProtocolError       an answer that is not what the API allows (shape, size)
        └── SfuUnavailable         the SFU cannot be reached or stopped answering

Subsystems add narrower subclasses next to the class they refine, below, in their section.
Messages never contain key material or plaintext.
"""

from __future__ import annotations


class HotlineError(Exception):
    """Base class of every error Hotline raises on purpose."""

    #: short machine-readable reason, used as a metrics label and in ``--json`` output
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


# --- whose fault ------------------------------------------------------------------------


class LocalError(HotlineError):
    """We, or our own operator, did something wrong."""

    reason = "local"


class RemoteError(HotlineError):
    """A peer (terminal, site, charter author) sent something we refuse."""

    reason = "remote"


class ExchangeError(HotlineError):
    """The exchange refused, failed, or misbehaved. It is untrusted."""

    reason = "exchange"


# --- local ------------------------------------------------------------------------------


class UsageError(LocalError):
    reason = "usage"


class KeyStorageError(LocalError):
    reason = "key_storage"


class PassphraseError(KeyStorageError):
    reason = "passphrase"


class StateError(LocalError):
    reason = "state"


class CounterExhausted(LocalError):
    reason = "counter_exhausted"


# --- remote -----------------------------------------------------------------------------


class EncodingError(RemoteError):
    reason = "encoding"


class SignatureError(RemoteError):
    reason = "bad_signature"


class CharterError(RemoteError):
    reason = "charter"


class CharterIncomplete(CharterError):
    reason = "charter_incomplete"


class CharterRollback(CharterError):
    reason = "charter_rollback"


class UnknownMember(CharterError):
    reason = "unknown_member"


class EnvelopeError(RemoteError):
    reason = "envelope"


class ReplayError(EnvelopeError):
    reason = "replay"


class E2EEError(RemoteError):
    reason = "e2ee"


class SFrameError(E2EEError):
    reason = "sframe"


class KeyAgreementError(E2EEError):
    reason = "key_agreement"


class CallError(RemoteError):
    reason = "call"


class LogIntegrityError(RemoteError):
    reason = "log_integrity"


# --- exchange ---------------------------------------------------------------------------


class AuthenticationError(ExchangeError):
    reason = "auth"


class LimitExceeded(ExchangeError):
    reason = "limit"


class ExchangeUnavailable(ExchangeError):
    reason = "unavailable"


# --- narrower classes, by subsystem -------------------------------------------------------
# (each subsystem adds its own below, in its own section, refining a class above)

# --- charter and provisioning (hotline.charter, hotline.provision) -------------------------


class CharterFormatError(CharterError):
    """A charter file (or record file) cannot be read at all: missing, truncated, oversized,
    not JSON, or not in the charter format. Distinct from a charter that reads but fails a check."""

    reason = "charter_format"


# --- call log (hotline.calllog) --------------------------------------------------------------


class BadLogEntry(LogIntegrityError):
    """A call log failed verification; ``index`` names the first bad entry (None: the
    file or its signed head as a whole). ``reason`` says what is wrong: ``hash_mismatch``,
    ``bad_signature``, ``broken_chain``, ``gap``, ``reordered``, ``truncated``,
    ``beyond_head``, ``head_missing``, ``head_signature``, ``head_mismatch``,
    ``tail_mismatch``, ``malformed``, ``corrupt``, ``bad_cosignature``, ``unknown_signer``,
    ``summary_mismatch``."""

    def __init__(self, message: str, *, index: int | None, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.index = index


class SummaryMismatch(CallError):
    """The peer signed a call summary whose facts differ from those this terminal logged."""

    reason = "summary_mismatch"


# media (hotline.media): the aiortc media engine and its frame-encryption seam


class AddressUnavailable(LocalError):
    """A port is in use, or an address is not this machine's: the environment, not the
    command (exit code 3, like an exchange that cannot be reached)."""

    reason = "address_unavailable"


class StillRunning(LocalError):
    """A terminal or exchange asked to stop is still running after the time allowed: the
    environment (exit code 3), not the command."""

    reason = "still_running"


class ConfigError(UsageError):
    """A site's local configuration file (``terminal.toml``) is missing, unsafe or invalid."""

    reason = "config"


class CodecRefused(E2EEError):
    """A negotiated codec that cannot carry per-frame E2EE here (anything but VP8 and Opus)."""

    reason = "codec_refused"


class MediaUnbound(StateError):
    """Media on a peer connection that has no frame crypto bound: nothing is sent or shown."""

    reason = "unbound"


class AiortcIncompatible(LocalError):
    """The installed aiortc is not the version whose internals ``media.aiortc_patch`` patches."""

    reason = "aiortc_incompatible"


class MediaDeviceError(LocalError):
    """A camera, microphone or media file is missing or cannot be opened."""

    reason = "media_device"


class OpusUnavailable(LocalError):
    """libopus (Debian ``libopus0``) cannot be loaded, or refused to create an encoder or
    decoder: the audio path's FEC, concealment and encoder settings need it."""

    reason = "opus_unavailable"


class OpusDecodeError(RemoteError):
    """libopus refused an (authenticated) Opus packet as malformed."""

    reason = "opus_decode"


class RelayUnavailable(LocalError):
    """No TURN relay of the charter can be used with this site's credentials: every one is
    down, unreachable, or refuses the credentials. The message names each relay's reason."""

    reason = "relay_unavailable"


class SdpError(CallError):
    """A session description is malformed or lacks what the call needs (fingerprint, codecs)."""

    reason = "sdp"


class FingerprintMismatch(SdpError):
    """The DTLS fingerprint in an SDP differs from the one bound in the signed envelope."""

    reason = "dtls_fingerprint"


# --- e2ee (hotline.e2ee): frames -----------------------------------------------------------


class MalformedFrame(SFrameError):
    """An SFrame ciphertext (or a media frame around it) cannot be parsed: truncated header,
    too short for the tag, a VP8 clear prefix cut short."""

    reason = "malformed_frame"


class UnknownKeyId(SFrameError):
    """No key for this KID: an epoch or sender we never had keys for."""

    reason = "unknown_kid"


class BadFrameTag(SFrameError):
    """The authentication tag does not verify: forged, altered, or the wrong key."""

    reason = "bad_tag"


class ReplayedFrame(SFrameError):
    """A counter already seen under this KID, or older than the replay window."""

    reason = "replay"


class ExpiredKey(SFrameError):
    """The KID belongs to an epoch whose keys were erased (after the grace period)."""

    reason = "expired_key"


class WrongSender(SFrameError):
    """A frame under one member's KID arrived on the peer connection of another member
    (mesh calls bind each connection to its peer's sender index): a forgery by a member, or
    a frame relayed where it should not be."""

    reason = "wrong_sender"


class UncheckedFrame(SFrameError):
    """A frame that authenticates under a member's key but whose hash cannot be recorded for
    the signed frame digests (the record between two digests is full): where the digests are
    the only proof of its sender (through an SFU), it is refused rather than shown unchecked."""

    reason = "hash_overflow"


class NoMediaKey(StateError):
    """Nothing to protect with: no epoch is active yet, or sending is paused while a member
    leaves. Media must not flow (fail closed)."""

    reason = "no_media_key"


class InvalidMediaFrame(UsageError):
    """The caller handed ``protect`` a frame it cannot protect (unknown kind, too short)."""

    reason = "invalid_media_frame"


# --- e2ee (hotline.e2ee): key agreement ------------------------------------------------------


class MalformedMessage(KeyAgreementError):
    """An ``e2ee.*`` message body is not a valid encoding of its structure."""

    reason = "malformed_message"


class ProtocolVersionMismatch(MalformedMessage):
    """An ``e2ee.*`` message of another version of the key agreement protocol (its label
    names the version, e.g. ``hotline.e2ee.v1.start``): the two terminals run different
    releases and cannot agree keys until both run the same protocol version."""

    reason = "e2ee_version_mismatch"


class BadKeySignature(KeyAgreementError):
    """A signature in an ``e2ee.*`` message does not verify with the signer's identity key."""

    reason = "e2ee_bad_signature"


class NotInDirectory(KeyAgreementError):
    """A terminal that is not in the charter's directory (or was removed from it)."""

    reason = "not_in_directory"


class SenderMismatch(KeyAgreementError):
    """The transport sender is not the member that signed the message."""

    reason = "sender_mismatch"


class WrongContext(KeyAgreementError):
    """A message for another line, call or charter version."""

    reason = "wrong_context"


class CharterVersionMismatch(WrongContext):
    """A member's signed message is bound to another version of the line's charter than
    ours: one of the two terminals has not got the newest charter yet. The message says
    which version each side has."""

    reason = "charter_version_mismatch"


class DowngradeRefused(KeyAgreementError):
    """A KEM or cipher suite other than the charter's policy."""

    reason = "downgrade"


class EpochRollback(KeyAgreementError):
    """An epoch not newer than one already seen: a replayed or rolled-back epoch."""

    reason = "epoch_rollback"


class RosterMismatch(KeyAgreementError):
    """A proposed roster we do not sign: wrong members, wrong proposer, our own key
    substituted, or a member's ephemeral key not signed by that member."""

    reason = "roster_mismatch"


class UnexpectedMessage(KeyAgreementError):
    """A well-formed message that does not fit the current state (wrong epoch, wrong step)."""

    reason = "unexpected_message"


class Equivocation(KeyAgreementError):
    """A member signed two different messages for the same step of the same epoch."""

    reason = "equivocation"


class SealedKeyError(KeyAgreementError):
    """A sealed epoch secret does not open, has the wrong size, or does not match the
    leader's commitment; or a revealed nonce does not match its commitment."""

    reason = "sealed_key"


class TranscriptMismatch(KeyAgreementError):
    """A member acknowledged a different epoch transcript than ours."""

    reason = "transcript_mismatch"


# --- exchange and envelopes (hotline.exchange, hotline.envelope) -------------------------


class StaleEnvelope(EnvelopeError):
    """An envelope whose timestamp is too old or too far in the future."""

    reason = "stale"


class MisroutedEnvelope(EnvelopeError):
    """An envelope for another line, another recipient, or sent in another terminal's name."""

    reason = "misrouted"


class UnknownRecipient(EnvelopeError):
    """An envelope addressed to a terminal that the line's charter does not list."""

    reason = "unknown_recipient"


class FrameError(EncodingError):
    """A WebSocket frame of the exchange protocol is malformed or unexpected."""

    reason = "bad_frame"


class TooLarge(LimitExceeded):
    reason = "too_large"


class RateLimited(LimitExceeded):
    reason = "rate_limited"


class QueueFull(LimitExceeded):
    reason = "queue_full"


class TooManyConnections(LimitExceeded):
    reason = "too_many_connections"


class DuplicateTerminal(LimitExceeded):
    """Two connections with one terminal's identity keep replacing each other at the
    exchange (two copies of one terminal folder running): the newcomer is refused."""

    reason = "duplicate_terminal"


class TLSPinMismatch(AuthenticationError):
    """The exchange's TLS certificate is not the one pinned in the charter."""

    reason = "tls_pin"


# --- the SFU (untrusted) ---------------------------------------------------------------------


class SfuError(HotlineError):
    """The SFU refused, failed or misbehaved. It is untrusted like the exchange: it carries
    frames it cannot read, and nothing it says about who is who is believed."""

    reason = "sfu"


class JanusError(SfuError):
    """Janus (core or VideoRoom plugin) answered a request with an error."""

    reason = "janus_error"

    def __init__(self, code: int, message: str, *, request: str = "") -> None:
        what = f"{request}: " if request else ""
        super().__init__(f"Janus refused {what}{message} (error {code})")
        #: Janus's numeric error code (core 4xx from janus.h, VideoRoom 4xx from the plugin)
        self.code = code
        #: Janus's own text, clipped
        self.janus_reason = message
        self.request = request


class SfuProtocolError(SfuError):
    """An SFU answer that breaks its API: not JSON, too large, wrong shape or type."""

    reason = "sfu_protocol"


class SfuUnavailable(SfuError):
    """The SFU cannot be reached, or stopped answering in time."""

    reason = "sfu_unavailable"
