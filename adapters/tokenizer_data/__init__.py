"""Tokenizer files shipped inside the package, loaded through tiktoken's own API.

Each file is byte-for-byte the one tiktoken downloads for that encoding; loading checks it
against the sha256 tiktoken itself pins (tiktoken_ext.openai_public), so a damaged or
substituted file fails loudly instead of counting wrong. Nothing here touches the network.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

import tiktoken
from tiktoken.load import load_tiktoken_bpe


class _Spec(NamedTuple):
    sha256: str  # as tiktoken_ext.openai_public pins it
    pattern: str
    special_tokens: dict[str, int]


# tiktoken_ext.openai_public's cl100k_base pattern and special tokens, unchanged.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
_SHIPPED = {
    "cl100k_base": _Spec(
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PATTERN,
        _CL100K_SPECIAL,
    ),
}
VENDORED = frozenset(_SHIPPED)


def vendored_path(name: str) -> str:
    """The shipped BPE file of encoding `name`; KeyError when it is not shipped."""
    if name not in _SHIPPED:
        raise KeyError(name)
    return str(resources.files(__name__).joinpath(f"{name}.tiktoken"))


def load_vendored_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """The encoding `name` built from its shipped file (about 0.4 s: load once, off the
    event loop). Raises KeyError when `name` is not shipped, ValueError when the file
    fails its sha256 (tiktoken's own check)."""
    spec = _SHIPPED[name]
    ranks = load_tiktoken_bpe(vendored_path(name), expected_hash=spec.sha256)
    return tiktoken.Encoding(
        name,
        pat_str=spec.pattern,
        mergeable_ranks=ranks,
        special_tokens=spec.special_tokens,
    )


def published_sha256(name: str) -> str:
    """The sha256 this package expects for `name`'s file."""
    return _SHIPPED[name].sha256
