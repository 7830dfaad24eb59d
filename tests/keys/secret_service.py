"""A real, private Secret Service for tests: a D-Bus session bus and an unlocked GNOME Keyring.

:class:`SecretService` starts ``dbus-daemon`` (its own session bus on a socket in a temp
dir) and ``gnome-keyring-daemon --unlock --components=secrets`` on it, with HOME and the
XDG dirs in that temp dir, so no test ever touches the user's own keyring. ``env`` is
what a sidecar needs to use it; :meth:`lookup` reads an item back with ``secret-tool``
(libsecret, a client independent of the sidecar's ``keyring``).

Without the programs the fixture skips, unless ``SIDECAR_REQUIRE_KEYCHAIN=1`` (CI), where
it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["SERVICE", "SecretService", "secret_service"]

#: The service name the sidecar stores keys under (``sidecar.store.keys.SERVICE``).
SERVICE = "model-sidecar"
_PROGRAMS = ("dbus-daemon", "gnome-keyring-daemon", "secret-tool")
_START_TIMEOUT_S = 20.0
_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class SecretService:
    """A private session bus with an unlocked GNOME Keyring on it (see the module doc)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="secret-service-"))
        for sub in ("home", "data", "config", "run"):
            (self.root / sub).mkdir(mode=0o700)
        self._processes: list[subprocess.Popen[bytes]] = []
        self.address = self._start_bus()
        self.env = {
            "DBUS_SESSION_BUS_ADDRESS": self.address,
            "HOME": str(self.root / "home"),
            "XDG_DATA_HOME": str(self.root / "data"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
        }
        self._start_keyring()

    def _start_bus(self) -> str:
        # A bus of its own config: no service files, so nothing is activated on demand (the
        # system's gnome-keyring would start with the real HOME); only our daemon serves.
        config = self.root / "config" / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=self.root / "run" / "bus"))
        bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self._processes.append(bus)
        assert bus.stdout is not None
        line = bus.stdout.readline().decode().strip()  # printed once the bus listens
        if not line:
            self.close()
            raise RuntimeError("dbus-daemon did not start")
        return line

    def _start_keyring(self) -> None:
        keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env})
        self._processes.append(keyring)
        assert keyring.stdin is not None
        keyring.stdin.write(b"test-password")  # the login keyring is created with it, unlocked
        keyring.stdin.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while self.search() is None:  # not answering yet
            if time.monotonic() > deadline or keyring.poll() is not None:
                self.close()
                raise RuntimeError("gnome-keyring-daemon did not come up on the test bus")
            time.sleep(0.05)

    def _secret_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["secret-tool", *args], capture_output=True, text=True, timeout=20,
                              env={**os.environ, **self.env}, check=False)

    def search(self) -> dict[str, str] | None:
        """Every item of the sidecar's service (account → secret); None: the service is not up."""
        done = self._secret_tool("search", "--all", "--unlock", "service", SERVICE)
        if done.returncode not in (0, 1) or "not provided by any .service files" in done.stderr:
            return None
        # secret-tool prints each item's secret on stdout and its attributes on stderr.
        accounts = [line.split(" = ", 1)[1] for line in done.stderr.splitlines()
                    if line.startswith("attribute.username = ")]
        return {account: self.lookup(account) or "" for account in accounts}

    def lookup(self, account: str) -> str | None:
        """The secret stored for ``account`` under the sidecar's service (None: no item)."""
        done = self._secret_tool("lookup", "service", SERVICE, "username", account)
        return done.stdout if done.returncode == 0 else None

    def clear(self, account: str) -> None:
        """Delete the item of ``account``, as a user can in their keyring's manager."""
        done = self._secret_tool("clear", "service", SERVICE, "username", account)
        assert done.returncode == 0, done.stderr

    def store(self, account: str, secret: str) -> None:
        done = subprocess.run(["secret-tool", "store", "--label", "test", "service", SERVICE, "username", account],
                              input=secret, capture_output=True, text=True, timeout=20,
                              env={**os.environ, **self.env}, check=False)
        assert done.returncode == 0, done.stderr

    def close(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        self._processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def secret_service() -> Iterator[SecretService]:
    """A private Secret Service for the module's tests (skips where it cannot run)."""
    missing = [name for name in _PROGRAMS if shutil.which(name) is None]
    if missing:
        message = f"no Secret Service for tests: {', '.join(missing)} not installed (scripts/setup.sh)"
        if os.environ.get("SIDECAR_REQUIRE_KEYCHAIN") == "1":
            pytest.fail(message)
        pytest.skip(message)
    service = SecretService()
    try:
        yield service
    finally:
        service.close()
