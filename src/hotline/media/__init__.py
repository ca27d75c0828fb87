"""The media engine on aiortc: frame-encryption seam, peer connections, sources, sinks, stats.

- :mod:`~hotline.media.aiortc_patch`: the only module touching aiortc internals (E2EE seam).
- :mod:`~hotline.media.engine`: explicit ICE settings, DTLS fingerprints, VP8 + Opus only.
- :mod:`~hotline.media.sources` / :mod:`~hotline.media.sinks`: synthetic, file, devices;
  frame-id and chirp measurement.
- :mod:`~hotline.media.stats`: per-call counters, latency, RTP statistics.
"""
