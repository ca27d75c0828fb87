"""systemd unit files shipped with Hotline (``hotline exchange|terminal install-unit``)."""

from __future__ import annotations

import shlex
import sys
from importlib import resources
from pathlib import Path

EXCHANGE_UNIT = "hotline-exchange.service"
TERMINAL_UNIT = "hotline-terminal@.service"


def hotline_command() -> str:
    """How systemd should start this installation's ``hotline``: the script beside this
    Python (a virtualenv's bin/), else ``PYTHON -m hotline``. Absolute either way."""
    script = Path(sys.executable).parent / "hotline"
    if script.is_file():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(str(Path(sys.executable).absolute()))} -m hotline"


def render(name: str, command: str | None = None) -> str:
    """The unit file ``name`` with ExecStart pointing at ``command`` (default: this one)."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return text.replace("@HOTLINE@", command or hotline_command())
