"""Conferences through a selective forwarding unit (Janus's VideoRoom), untrusted like the
exchange: it forwards SFrame-protected frames it cannot read. ``janus``: the HTTP API client."""
