"""Hotline: a secure, end-to-end encrypted video-conference line."""

__version__ = "0.1.0"
