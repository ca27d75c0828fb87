"""A small ctypes binding to the system libopus (Debian ``libopus0``): FEC, PLC, encoder CTLs.

PyAV's libopus wrapper cannot do what the audio path needs: FFmpeg's decoder hard-codes
``decode_fec=0`` and has no concealment entry, and its encoder options are fixed when the
codec opens (the expected loss cannot follow the receiver's reports). libopus can:

- :meth:`OpusDecoder.decode` decodes a packet; :meth:`OpusDecoder.decode_fec` rebuilds the
  frame *before* a packet from that packet's in-band FEC data (LBRR); :meth:`OpusDecoder.conceal`
  is Opus PLC (``opus_decode`` with no data).
- :class:`OpusEncoder` encodes 16-bit PCM with in-band FEC on and ``OPUS_SET_PACKET_LOSS_PERC``
  changeable at any time (:meth:`OpusEncoder.set_packet_loss`).

Only the handful of calls used are bound. Variadic ``opus_encoder_ctl`` has no ``argtypes``, so
every argument is passed as an explicit ctypes value (a bare Python int would be truncated
to 32 bits: the encoder pointer must be a ``c_void_p``). Objects are not thread-safe: each
belongs to one encoder or decoder thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

from hotline.errors import OpusDecodeError, OpusUnavailable

RATE = 48000
#: the most samples per channel one Opus packet may hold (120 ms at 48 kHz)
MAX_FRAME = 5760
MAX_PACKET = 1500

OPUS_OK = 0
APPLICATION_VOIP = 2048
APPLICATION_AUDIO = 2049
SIGNAL_VOICE = 3001
SET_BITRATE = 4002
GET_BITRATE = 4003
SET_VBR = 4006
SET_COMPLEXITY = 4010
SET_INBAND_FEC = 4012
GET_INBAND_FEC = 4013
SET_PACKET_LOSS_PERC = 4014
GET_PACKET_LOSS_PERC = 4015
SET_SIGNAL = 4024
RESET_STATE = 4028

_lib: Any = None
_lib_lock = threading.Lock()


def _load() -> Any:
    global _lib  # noqa: PLW0603 - one shared library handle per process
    with _lib_lock:
        if _lib is not None:
            return _lib
        names = [ctypes.util.find_library("opus"), "libopus.so.0", "libopus.so"]
        lib = None
        for name in names:
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise OpusUnavailable("libopus not found (install Debian's libopus0)")
        c_int, c_void_p, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
        lib.opus_get_version_string.restype = c_char_p
        lib.opus_strerror.restype = c_char_p
        lib.opus_strerror.argtypes = [c_int]
        lib.opus_decoder_create.restype = c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, c_int, ctypes.POINTER(c_int)]
        lib.opus_decoder_destroy.argtypes = [c_void_p]
        lib.opus_decode.restype = c_int
        lib.opus_decode.argtypes = [
            c_void_p,
            c_char_p,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_int16),
            c_int,
            c_int,
        ]
        lib.opus_encoder_create.restype = c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, c_int, c_int, ctypes.POINTER(c_int)]
        lib.opus_encoder_destroy.argtypes = [c_void_p]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [
            c_void_p,
            ctypes.POINTER(ctypes.c_int16),
            c_int,
            c_char_p,
            ctypes.c_int32,
        ]
        lib.opus_encoder_ctl.restype = c_int
        lib.opus_decoder_ctl.restype = c_int
        _lib = lib
        return lib


def available() -> bool:
    try:
        _load()
    except OpusUnavailable:
        return False
    return True


def version() -> str:
    return str(_load().opus_get_version_string().decode())


def _strerror(code: int) -> str:
    return str(_load().opus_strerror(code).decode())


class OpusDecoder:
    """Decodes to interleaved 16-bit PCM at 48 kHz (``channels`` 1 or 2)."""

    def __init__(self, channels: int = 2) -> None:
        self._lib = _load()
        self.channels = channels
        err = ctypes.c_int(0)
        self._dec = self._lib.opus_decoder_create(RATE, channels, ctypes.byref(err))
        if err.value != OPUS_OK or not self._dec:
            raise OpusUnavailable(f"opus_decoder_create: {_strerror(err.value)}")
        self._pcm = (ctypes.c_int16 * (MAX_FRAME * channels))()

    def _run(self, data: bytes | None, samples: int, fec: int) -> bytes:
        if not 0 < samples <= MAX_FRAME:
            raise ValueError(f"frame of {samples} samples")
        n = self._lib.opus_decode(
            self._dec, data, len(data) if data else 0, self._pcm, samples, fec
        )
        if n < 0:
            raise OpusDecodeError(f"opus_decode: {_strerror(n)}")
        return ctypes.string_at(self._pcm, n * self.channels * 2)

    def decode(self, packet: bytes) -> bytes:
        """Decode one packet (all the samples it holds)."""
        if not packet:
            raise OpusDecodeError("empty Opus packet")
        return self._run(packet, MAX_FRAME, 0)

    def decode_fec(self, next_packet: bytes, samples: int) -> bytes:
        """The ``samples`` before ``next_packet``, rebuilt from its in-band FEC data.

        Without FEC data in ``next_packet`` libopus conceals instead (as PLC would).
        Decode ``next_packet`` itself normally afterwards."""
        return self._run(next_packet, samples, 1)

    def conceal(self, samples: int) -> bytes:
        """Opus packet-loss concealment for ``samples`` missing samples."""
        return self._run(None, samples, 0)

    def close(self) -> None:
        if self._dec:
            self._lib.opus_decoder_destroy(self._dec)
            self._dec = None

    def __del__(self) -> None:
        self.close()


class OpusEncoder:
    """Encodes 16-bit PCM at 48 kHz, in-band FEC on, VoIP application, voice signal."""

    def __init__(
        self,
        channels: int = 1,
        bitrate: int = 32000,
        fec: bool = True,
        packet_loss: int = 0,
        application: int = APPLICATION_VOIP,
    ) -> None:
        self._lib = _load()
        self.channels = channels
        err = ctypes.c_int(0)
        self._enc = self._lib.opus_encoder_create(RATE, channels, application, ctypes.byref(err))
        if err.value != OPUS_OK or not self._enc:
            raise OpusUnavailable(f"opus_encoder_create: {_strerror(err.value)}")
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        self._ctl(SET_BITRATE, bitrate)
        self._ctl(SET_SIGNAL, SIGNAL_VOICE)
        self._ctl(SET_INBAND_FEC, 1 if fec else 0)
        self.set_packet_loss(packet_loss)

    def _ctl(self, request: int, value: int) -> None:
        rc = self._lib.opus_encoder_ctl(
            ctypes.c_void_p(self._enc), ctypes.c_int(request), ctypes.c_int(value)
        )
        if rc != OPUS_OK:
            raise OpusUnavailable(f"opus_encoder_ctl({request}): {_strerror(rc)}")

    def _get(self, request: int) -> int:
        value = ctypes.c_int(0)
        rc = self._lib.opus_encoder_ctl(
            ctypes.c_void_p(self._enc), ctypes.c_int(request), ctypes.byref(value)
        )
        if rc != OPUS_OK:
            raise OpusUnavailable(f"opus_encoder_ctl({request}): {_strerror(rc)}")
        return value.value

    def set_packet_loss(self, percent: int) -> None:
        """The loss the encoder expects (0..100 %): how much it spends on FEC."""
        self._ctl(SET_PACKET_LOSS_PERC, max(0, min(100, int(percent))))

    def set_bitrate(self, bitrate: int) -> None:
        self._ctl(SET_BITRATE, bitrate)

    @property
    def packet_loss(self) -> int:
        return self._get(GET_PACKET_LOSS_PERC)

    @property
    def inband_fec(self) -> bool:
        return bool(self._get(GET_INBAND_FEC))

    @property
    def bitrate(self) -> int:
        return self._get(GET_BITRATE)

    def encode(self, pcm: bytes, samples: int) -> bytes:
        """Encode ``samples`` per channel of interleaved s16 PCM (2.5 to 60 ms)."""
        if len(pcm) != samples * self.channels * 2:
            raise ValueError("PCM length does not match samples * channels")
        buf = (ctypes.c_int16 * (samples * self.channels)).from_buffer_copy(pcm)
        n = self._lib.opus_encode(self._enc, buf, samples, self._out, MAX_PACKET)
        if n < 0:
            raise OpusUnavailable(f"opus_encode: {_strerror(n)}")
        return self._out.raw[:n]

    def close(self) -> None:
        if self._enc:
            self._lib.opus_encoder_destroy(self._enc)
            self._enc = None

    def __del__(self) -> None:
        self.close()
