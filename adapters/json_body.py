"""Encodes provider request bodies, splicing caller JSON text (tool schemas, tool-call
arguments) in verbatim: the proto keeps them as text so they are never re-encoded."""

from __future__ import annotations

import secrets
from typing import Any

import orjson


class JsonBody:
    """Collects verbatim JSON fragments while a body is built, then encodes it once.

    `raw(text)` returns a placeholder string to put in the body; `encode` replaces each
    placeholder's JSON form with its text. The placeholder carries a random nonce and NUL
    characters, so no caller text can collide with it.
    """

    def __init__(self) -> None:
        # Drawn at the first fragment: most bodies have none, and drawing costs a syscall.
        self._nonce = ""
        self._fragments: list[str] = []

    def raw(self, json_text: str) -> str:
        if not self._nonce:
            self._nonce = secrets.token_hex(8)
        placeholder = f"\0{self._nonce}:{len(self._fragments)}\0"
        self._fragments.append(json_text.strip())
        return placeholder

    def encode(self, body: dict[str, Any]) -> bytes:
        encoded = orjson.dumps(body)
        for index, fragment in enumerate(self._fragments):
            placeholder = orjson.dumps(f"\0{self._nonce}:{index}\0")
            encoded = encoded.replace(placeholder, fragment.encode(), 1)
        return encoded
