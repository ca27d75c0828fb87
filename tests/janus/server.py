"""A real Janus for tests: ``janus -F FOLDER`` in the foreground, from a configuration of its own.

The folder holds the whole configuration: only the VideoRoom plugin and the HTTP transport
(symlinked from Debian's ``janus`` package into folders of their own, so no other plugin,
transport, event handler or logger can load), the HTTP API on 127.0.0.1 at a free port, no
admin API (unless a test asks for it, on 127.0.0.1 with a secret), no STUN, no public
address. :func:`running_janus` skips when ``janus`` is missing
and fails in CI.

Janus never gathers ICE candidates on a loopback interface (it skips ``IFF_LOOPBACK``
interfaces, and libnice then falls back to every other address of the host). So media tests
run Janus *and* the terminals' peer connections inside one network namespace of the lab
(``tests.netlab``): ``lo`` plus the lab's ``lab0`` device, whose address is local to that
namespace; ICE is enforced to ``lab0`` and media never leaves the namespace. Without a
namespace (``host=None``, signalling-only tests), ICE is enforced to ``lo`` and gathers on
the host's addresses: use it only where no peer connection is made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require
from tests.netlab import Host, Lab, in_namespace, prerequisites
from tests.turnserver import free_port

JANUS = shutil.which("janus") or "/usr/bin/janus"
#: where Debian's package puts its plugins and transports
LIBDIR = Path("/usr/lib/x86_64-linux-gnu/janus")
PLUGIN = "libjanus_videoroom.so"
TRANSPORT = "libjanus_http.so"


@dataclass
class JanusServer:
    """One Janus process serving its HTTP API at :attr:`url` (loopback only)."""

    folder: Path
    port: int = field(default_factory=free_port)
    #: RTP/ICE ports: a range of their own, so that parallel test runs do not collide
    rtp_ports: tuple[int, int] = (0, 0)
    #: the lab namespace Janus runs in (None: this process's namespace)
    host: Host | None = None
    proc: subprocess.Popen[bytes] | None = None
    #: the admin API on 127.0.0.1 (off unless a test plays the SFU's operator with it)
    admin: bool = False
    admin_port: int = field(default_factory=free_port)
    admin_secret: str = "hotline-test-admin"

    @property
    def ice_interface(self) -> str:
        return "lab0" if self.host is not None else "lo"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/janus"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/admin"

    @property
    def log_path(self) -> Path:
        return self.folder / "janus.log"

    def core_config(self) -> str:
        rtp = (
            f'rtp_port_range = "{self.rtp_ports[0]}-{self.rtp_ports[1]}"'
            if self.rtp_ports[0]
            else ""
        )
        return f"""
general: {{
    configs_folder = "{self.folder}"
    plugins_folder = "{self.folder / "plugins"}"
    transports_folder = "{self.folder / "transports"}"
    events_folder = "{self.folder / "events"}"
    loggers_folder = "{self.folder / "loggers"}"
    debug_level = 4
    debug_timestamps = true
    debug_colors = false
    interface = "127.0.0.1"
    server_name = "hotline-test-sfu"
    session_timeout = 60
    hide_dependencies = true
    exit_on_dl_error = true
    {f'admin_secret = "{self.admin_secret}"' if self.admin else ""}
}}
certificates: {{
    dtls_accept_selfsigned = true
}}
media: {{
    ipv6 = false
    {rtp}
}}
nat: {{
    ice_enforce_list = "{self.ice_interface}"
    ignore_mdns = true
    nice_debug = false
    full_trickle = false
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
    broadcast = false
}}
"""

    def http_config(self) -> str:
        return f"""
general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {self.port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = {"true" if self.admin else "false"}
    admin_port = {self.admin_port}
    admin_ip = "127.0.0.1"
    admin_base_path = "/admin"
    admin_https = false
}}
cors: {{
}}
"""

    def videoroom_config(self) -> str:
        # no pre-made rooms: each conference creates its own require_e2ee room
        return "general: {\n}\n"

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for sub, lib in (("plugins", PLUGIN), ("transports", TRANSPORT)):
            target = self.folder / sub
            target.mkdir(exist_ok=True)
            link = target / lib
            if not link.exists():
                link.symlink_to(LIBDIR / sub / lib)
        for sub in ("events", "loggers"):
            (self.folder / sub).mkdir(exist_ok=True)
        (self.folder / "janus.jcfg").write_text(self.core_config())
        (self.folder / "janus.transport.http.jcfg").write_text(self.http_config())
        (self.folder / "janus.plugin.videoroom.jcfg").write_text(self.videoroom_config())

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        log = self.log_path.open("ab")
        argv = [JANUS, "-F", str(self.folder), "-C", str(self.folder / "janus.jcfg"), "-o"]
        self.proc = subprocess.Popen(
            self.host.argv(argv) if self.host is not None else argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.folder,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"janus did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def answers(self) -> bool:
        """Whether the HTTP API answers ``info`` as a Janus server."""
        if self.host is not None:
            return in_namespace(self.host.ns, self._answers)
        return self._answers()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/info", timeout=1) as resp:
                info = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return isinstance(info, dict) and info.get("janus") == "server_info"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def require_janus() -> None:
    require(os.access(JANUS, os.X_OK), "Janus (Debian's janus package) is not installed")
    require((LIBDIR / "plugins" / PLUGIN).exists(), f"Janus's VideoRoom plugin is not in {LIBDIR}")


@contextlib.contextmanager
def running_janus(
    folder: Path, host: Host | None = None, *, admin: bool = False
) -> Iterator[JanusServer]:
    require_janus()
    server = JanusServer(folder, host=host, admin=admin)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def janus_in_lab(
    folder: Path, name: str, *, seed: int, admin: bool = False
) -> Iterator[tuple[Host, JanusServer]]:
    """A lab host ``name`` (its own namespace) and a Janus running in it."""
    problem = prerequisites()
    require(problem is None, problem or "")
    with Lab(seed=seed) as lab:
        host = lab.add_host(name)
        with running_janus(folder, host, admin=admin) as janus:
            yield host, janus
