"""The agent's kept TLS identity (agent.tls_identity) is a matching pair or is made anew: a key
left by a crash between writing the key and the certificate is not accepted."""

from __future__ import annotations

from pathlib import Path

from agent.tls_identity import create_certificate, fingerprint_of, load_or_create


def test_a_key_that_is_not_the_certificates_is_detected_and_the_pair_replaced(
    tmp_path: Path,
) -> None:
    first = load_or_create(tmp_path)
    first.server_context()  # a matching pair loads
    # a crash after the new key was written, before its certificate: the old certificate stays
    _, other_key = create_certificate("inventiv-agent", [])
    first.key_path.write_bytes(other_key)
    again = load_or_create(tmp_path)
    assert again.fingerprint != first.fingerprint
    assert again.fingerprint == fingerprint_of(again.cert_path.read_bytes())
    again.server_context()  # load_cert_chain accepts the pair
    assert again.key_path.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in again.cert_path.parent.iterdir()) == ["cert.pem", "key.pem"]
    assert load_or_create(tmp_path).fingerprint == again.fingerprint  # and it is kept
