"""The TLS contexts network.build_ssl_context makes (the stdio tests connect with them)."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest

from sidecar.providers.network import SetupFailed, Trust, build_ssl_context, system_trust
from tests.network.support import TestCA


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux store is read by OpenSSL")
def test_the_system_store_is_loaded_once_into_a_verifying_context() -> None:
    store = system_trust()
    assert store.startswith("openssl:") and Path(store.removeprefix("openssl:")).exists()
    ctx = build_ssl_context(Trust())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    # Loaded at build time (truststore would reload the bundle on every handshake).
    assert ctx.cert_store_stats()["x509_ca"] > 0


def test_a_ca_file_is_added_to_the_system_store(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    base = build_ssl_context(Trust()).cert_store_stats()["x509_ca"]
    ctx = build_ssl_context(Trust(ca_file=str(ca.pem_path)))
    assert ctx.cert_store_stats()["x509_ca"] == base + 1
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_insecure_skip_verify_is_the_only_way_to_an_unverified_context(tmp_path: Path) -> None:
    insecure = build_ssl_context(Trust(insecure=True))
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    for trust in (Trust(), Trust(cert_file=str(TestCA(tmp_path).pem_path))):
        assert build_ssl_context(trust).verify_mode == ssl.CERT_REQUIRED


def test_unusable_extra_roots_say_which_and_why(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(SetupFailed, match=r"^SSL_CERT_FILE .*empty\.pem holds no PEM certificate$"):
        build_ssl_context(Trust(cert_file=str(tmp_path / "empty.pem")))
    with pytest.raises(SetupFailed, match=r"^caFile .* cannot be read \(No such file or directory\)$"):
        build_ssl_context(Trust(ca_file=str(tmp_path / "missing.pem")))
