"""Conferences through a selective forwarding unit (Janus's VideoRoom), untrusted like the
exchange: it forwards SFrame-protected frames it cannot read. ``janus``: the HTTP API client;
``room``: the Janus side of a terminal's conference, shared by both media engines;
``conference``: the aiortc engine's peer connections (the browser engine's are in
``hotline.ui.browser_conference``); ``topology``: mesh or SFU, and the call's room."""
