"""Real network parts for the trust and proxy tests: a test CA and a forward proxy.

``TestCA`` makes a root certificate and server certificates signed by it (the
``cryptography`` package; nothing is kept in the repository). ``ForwardProxy`` runs
proxy.py (PyPI) in a subprocess on 127.0.0.1, optionally with basic authentication, with
:mod:`tests.network.proxy_plugin` loaded: ``*.test`` names resolve to 127.0.0.1 there,
and :meth:`ForwardProxy.connections` lists what it carried.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.keys import PROXY_PASSWORD

__all__ = ["PROXY_PASSWORD", "PROXY_USER", "ForwardProxy", "TestCA"]

REPO = Path(__file__).resolve().parents[2]
PROXY_USER = "corp-user"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class TestCA:
    """A root CA made for one test, and server certificates it signs."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "Sidecar Test Root CA") -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.pem_path = directory / "test-root-ca.pem"
        self.pem_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, *names: str, ips: tuple[str, ...] = ("127.0.0.1",),
                       expired: bool = False) -> ssl.SSLContext:
        """A server-side context whose certificate this CA signed for ``names`` and ``ips``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self.server_files(*names, ips=ips, expired=expired))
        return context

    def server_files(self, *names: str, ips: tuple[str, ...] = ("127.0.0.1",),
                     expired: bool = False) -> tuple[Path, Path]:
        """PEM files (certificate, key) of a server certificate this CA signed."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = ((now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired
                      else (now - datetime.timedelta(days=1), now + datetime.timedelta(days=10)))
        alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0] if names else ips[0])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = self.directory / f"server-{x509.random_serial_number():x}"
        cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


class ForwardProxy:
    """proxy.py on 127.0.0.1 in a subprocess; ``with ForwardProxy(dir) as proxy:``.

    ``tls``: (certificate, key) PEM files: an HTTPS proxy (clients speak TLS to it).
    """

    def __init__(self, directory: Path, *, auth: bool = False, tls: tuple[Path, Path] | None = None) -> None:
        self.directory = directory
        self.auth = auth
        self.tls = tls
        self.log_path = directory / f"proxy-{id(self):x}.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ForwardProxy:
        port_file = self.directory / f"proxy-{id(self):x}.port"
        self.log_path.write_text("")
        command = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
                   "--port-file", str(port_file), "--num-workers", "1", "--num-acceptors", "1",
                   "--log-level", "WARNING", "--plugins", "tests.network.proxy_plugin.MapTestHosts"]
        if self.auth:
            command += ["--basic-auth", f"{PROXY_USER}:{PROXY_PASSWORD}"]
        if self.tls is not None:
            command += ["--cert-file", str(self.tls[0]), "--key-file", str(self.tls[1])]
        env = {**os.environ, "NETWORK_TEST_PROXY_LOG": str(self.log_path),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.stderr_path = self.directory / f"proxy-{id(self):x}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._process.poll() is None:
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit() and int(text) > 0:
                self.port = int(text)
                return self
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"proxy.py did not start within 30 s: {self.stderr_path.read_text()[-2000:]}")

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def url(self, *, password: str | None = None) -> str:
        """``http(s)://[user:password@]127.0.0.1:port`` (the real password when ``auth``)."""
        scheme = "https" if self.tls is not None else "http"
        if self.auth or password is not None:
            secret = password if password is not None else PROXY_PASSWORD
            return f"{scheme}://{PROXY_USER}:{secret}@127.0.0.1:{self.port}"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connections(self) -> list[str]:
        """``METHOD host:port`` of every upstream connection the proxy made so far."""
        return [line for line in self.log_path.read_text().splitlines() if line]
