"""Token counting with an encoding (the offline choice, never a download) and the cheap
completion estimate from characters."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiktoken.load

from adapters.token_estimate import (
    OFFLINE_ENCODING,
    TokenCounter,
    load_offline_encoding,
    tokens_for_chars,
)
from imesh.v1 import chat_pb2


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty tiktoken cache, and a download that fails the test if attempted (reading
    the file shipped in adapters/tokenizer_data stays allowed)."""
    read_file = tiktoken.load.read_file

    def refuse(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tried to download {blobpath}")
        return read_file(blobpath)

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


@pytest.mark.usefixtures("no_network")
def test_an_uncached_public_encoding_falls_back_to_the_shipped_cl100k_without_download() -> None:
    encoding, source = load_offline_encoding("o200k_base")
    assert source == f"vendored:{OFFLINE_ENCODING}"
    assert encoding is not None
    assert encoding.encode("hello world") == [15339, 1917]  # cl100k_base's official ids


@pytest.mark.parametrize("name", ["o200k_harmony", "p50k_edit"])
@pytest.mark.usefixtures("no_network")
def test_a_public_encoding_that_reuses_an_uncached_file_falls_back_without_download(
    name: str,
) -> None:
    # o200k_harmony (gpt-oss) loads o200k_base's file and p50k_edit p50k_base's.
    encoding, source = load_offline_encoding(name)
    assert source == f"vendored:{OFFLINE_ENCODING}"
    assert encoding is not None


def test_a_corrupt_cached_file_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: None
) -> None:
    import hashlib

    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"not a bpe file")
    _, source = load_offline_encoding("o200k_base")
    assert source == f"vendored:{OFFLINE_ENCODING}"


@pytest.mark.usefixtures("no_network")
async def test_counter_counts_prompt_with_per_message_framing() -> None:
    counter = TokenCounter("o200k_base")
    chat = chat_pb2.ChatInput(
        messages=[
            chat_pb2.Message(
                role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hello world")]
            )
        ]
    )
    assert await counter.count_text("hello world") == 2
    assert await counter.count_prompt(chat) == 2 + 3 + 3
    usage = await counter.estimate(chat, ["hello", " world"])
    assert usage.estimated
    assert usage.completion_tokens == 2


def test_relayed_characters_give_a_token_per_four_rounded_up() -> None:
    assert tokens_for_chars(0) == 0
    assert tokens_for_chars(1) == 1
    assert tokens_for_chars(8) == 2
    assert tokens_for_chars(9) == 3
