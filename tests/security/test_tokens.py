"""Service tokens: given by reference, checked in constant time, never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.config import ClientTLS, SecretRef
from adapters.hop_auth import CredentialError, TokenChecker, read_pem, resolve_token
from tests.security.conftest import TOKEN, token_ref


def test_checker_accepts_each_configured_token_and_nothing_else() -> None:
    checker = TokenChecker([TOKEN, "next-token-0123456789abcdef"])
    assert checker.accepts(TOKEN)
    assert checker.accepts("next-token-0123456789abcdef")
    assert not checker.accepts(None)
    assert not checker.accepts("")
    assert not checker.accepts(TOKEN[:-1])  # a prefix is not the token
    assert not checker.accepts(TOKEN + "x")


def test_checker_needs_a_token() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        TokenChecker([])


def test_token_is_read_from_a_file_reference_without_its_newline(tmp_path: Path) -> None:
    assert resolve_token(token_ref(tmp_path, TOKEN)) == TOKEN


def test_token_is_read_from_an_env_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOP_TEST_TOKEN", TOKEN)
    assert resolve_token(SecretRef.model_validate("env:HOP_TEST_TOKEN")) == TOKEN


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("tiny-x7", "shorter than 16 characters"),
        ("with a space 0123456789", "printable ASCII without spaces"),
        ("caf\u00e9-0123456789abcdef", "printable ASCII without spaces"),
    ],
)
def test_unusable_token_fails_naming_the_reference_never_the_value(
    tmp_path: Path, value: str, complaint: str
) -> None:
    with pytest.raises(CredentialError, match=complaint) as caught:
        resolve_token(token_ref(tmp_path, value))
    assert str(tmp_path) in str(caught.value)
    assert value not in str(caught.value)


def test_missing_token_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(KeyError, match=f"secret file {missing} cannot be read"):
        resolve_token(SecretRef.model_validate(f"file:{missing}"))


def test_inline_secret_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="'env:NAME' or 'file:PATH', never inline"):
        SecretRef.model_validate("sk-live-0123456789abcdef")


def test_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValidationError, match="cert and key go together"):
        ClientTLS.model_validate({"ca": "/ca.crt", "cert": "/client.crt"})


def test_a_pem_that_is_not_there_or_not_pem_is_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"CA .*/absent\.crt cannot be read"):
        read_pem(tmp_path / "absent.crt", "CA")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate", encoding="utf-8")
    with pytest.raises(CredentialError, match="is not a PEM file"):
        read_pem(garbage, "CA")
