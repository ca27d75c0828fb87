"""End-to-end encryption of a call: SFrame per frame, sender keys over HPKE, signed rosters,
epochs and the security code. Pure: no I/O, time and randomness are passed in.

Modules: :mod:`~hotline.e2ee.sframe` (RFC 9605), :mod:`~hotline.e2ee.media` (codec framing
and the thread-safe frame crypto the media engine calls).
"""
