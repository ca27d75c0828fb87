"""The run options of ``hotline terminal run`` (``[terminal]`` and ``[log]`` of
``terminal.toml``), in a module of their own: the command line reads them for its help
without loading the media engine."""

from __future__ import annotations

from pathlib import Path

from hotline.settings import Option, log_options

#: every run option of a terminal: ``[terminal]`` and ``[log]`` in the file, a flag of
#: ``hotline terminal run``
TERMINAL_OPTIONS: tuple[Option, ...] = (
    Option("terminal.charter", "--charter", None, "the line's signed charter file", kind=Path),
    Option(
        "terminal.exchange",
        "--exchange",
        None,
        "exchange URL (default: the charter's first exchange, then the others)",
    ),
    Option(
        "terminal.interfaces",
        "--interfaces",
        "loopback",
        "where ICE gathers host candidates: loopback, all, or IP addresses (a,b)",
    ),
    Option(
        "terminal.control_port",
        "--control-port",
        0,
        "port of the local control API on 127.0.0.1 (0: any free one)",
        kind=int,
        low=0,
        high=65535,
    ),
    Option(
        "terminal.source",
        "--source",
        "synthetic",
        "what this terminal sends: synthetic[:tone|speech|silence], file:PATH, device[:CAM[,MIC]]",
    ),
    Option("terminal.width", "--width", 640, "synthetic video width", kind=int, low=16, high=4096),
    Option(
        "terminal.height", "--height", 360, "synthetic video height", kind=int, low=16, high=4096
    ),
    Option("terminal.fps", "--fps", 30, "video frames per second", kind=int, low=1, high=120),
    Option("terminal.auto_answer", "--auto-answer", False, "answer every call at once", kind=bool),
    Option(
        "terminal.scheduled_checks",
        "--scheduled-checks",
        True,
        "run readiness checks on the charter's schedule (the lower id of each pair calls)",
        kind=bool,
    ),
    Option(
        "terminal.check_retention_days",
        "--check-retention-days",
        7,
        "individual readiness check results are kept this many whole UTC days",
        kind=int,
        low=1,
        high=3660,
    ),
    Option(
        "terminal.check_retention_months",
        "--check-retention-months",
        3,
        "daily summaries of checks are kept this many months (then monthly ones)",
        kind=int,
        low=1,
        high=1200,
    ),
    Option(
        "terminal.capture_audio",
        "--capture-audio",
        None,
        "a WAV file for the audio played out of each peer (measuring terminals only)",
        kind=Path,
    ),
    Option(
        "terminal.alarm_hook",
        "--alarm-hook",
        None,
        "a command run when a readiness check is red (the alarm as JSON in $HOTLINE_ALARM)",
    ),
    Option(
        "terminal.ui",
        "--ui",
        None,
        "serve the terminal's screen (web UI) on [127.0.0.1:]PORT (0: any free port); a "
        "one-time login link is printed at start",
    ),
    Option(
        "terminal.engine",
        "--engine",
        "aiortc",
        "the media engine: aiortc (in this process) or browser (the open UI page; needs --ui)",
        choices=("aiortc", "browser"),
    ),
    Option(
        "terminal.passphrase_file",
        "--passphrase-file",
        None,
        "file holding the identity key's passphrase",
        kind=Path,
    ),
    *log_options("warning"),
)
