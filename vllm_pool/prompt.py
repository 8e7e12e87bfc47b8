"""The model's own prompt: its chat template rendered with jinja2 and tokenized with its
tokenizer, from the artifacts vLLM serves (`GetTokenizer`) or a shared path; and the
incremental detokenizer that turns streamed token ids back into text.

Rendering follows Hugging Face's `apply_chat_template` (sandboxed jinja2, trim_blocks,
lstrip_blocks, `raise_exception`, `tojson`), and the rendered text is tokenized without
added special tokens, as vLLM's chat endpoint does: the template places them itself.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from imesh.errors import invalid_argument
from imesh.v1 import chat_pb2

_ROLES = {
    chat_pb2.ROLE_SYSTEM: "system",
    # Few open models' templates know "developer"; it means the same as system.
    chat_pb2.ROLE_DEVELOPER: "system",
    chat_pb2.ROLE_USER: "user",
    chat_pb2.ROLE_ASSISTANT: "assistant",
    chat_pb2.ROLE_TOOL: "tool",
}
_REPLACEMENT = "\ufffd"


class PromptRenderer:
    """One model's chat template and tokenizer. Immutable after construction; shared by
    every request to the replicas that serve the model."""

    def __init__(self, tokenizer_json: str, tokenizer_config: dict[str, Any]) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        template = tokenizer_config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str):
            raise ValueError("the tokenizer config has no chat_template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
        self._template = env.from_string(template)
        self._specials = {
            name: _token_text(tokenizer_config.get(name)) for name in ("bos_token", "eos_token")
        }

    @classmethod
    def from_zip(cls, data: bytes) -> PromptRenderer:
        """From the zip vLLM's `GetTokenizer` streams."""
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = {Path(n).name: n for n in archive.namelist()}
            return cls(
                archive.read(names["tokenizer.json"]).decode(),
                json.loads(archive.read(names["tokenizer_config.json"])),
            )

    @classmethod
    def from_directory(cls, directory: Path) -> PromptRenderer:
        """From a model directory shared with the replicas."""
        return cls(
            (directory / "tokenizer.json").read_text(),
            json.loads((directory / "tokenizer_config.json").read_text()),
        )

    def render(self, chat: chat_pb2.ChatInput) -> str:
        try:
            return self._template.render(
                messages=[_message(m) for m in chat.messages],
                add_generation_prompt=True,
                **self._specials,
            )
        except jinja2.TemplateError as exc:
            raise invalid_argument(
                "messages", f"the model's chat template refused them: {exc}"
            ) from None

    def prompt_ids(self, chat: chat_pb2.ChatInput) -> list[int]:
        return list(self._tokenizer.encode(self.render(chat), add_special_tokens=False).ids)

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self._tokenizer)


class IncrementalDetokenizer:
    """Text deltas from streamed token ids, for one completion.

    Decodes a short window (the tokens since the last emitted text plus the few before
    them, for the tokenizer's context) rather than the whole completion each time, and
    holds text back while it ends in an incomplete UTF-8 sequence (U+FFFD), as vLLM does.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # end of the text already emitted

    def add(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """What is held back at the end of the completion (as it decodes, U+FFFD kept)."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        text = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(text) <= len(before) or (text.endswith(_REPLACEMENT) and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before) :]


def _message(message: chat_pb2.Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": _ROLES.get(message.role, "user")}
    texts: list[str] = []
    for part in message.content:
        if part.HasField("image"):
            raise invalid_argument("messages.content", "this pool's models take text only")
        texts.append(part.text)
    out["content"] = "".join(texts)
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in message.tool_calls
        ]
    return out


def _token_text(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)
