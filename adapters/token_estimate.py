"""The mesh's one token estimator.

Two kinds of figure, one module:
- cheap and deterministic, erring high, with no tokenizer (`text_tokens`,
  `estimate_prompt_tokens`, `tokens_for_chars`): admission, quota reservations, context
  window filtering, and a cut attempt's completion from the characters it relayed. A real
  tokenizer per request would cost more than the rest of planning; the real usage settles
  the books afterwards.
- counted with a tiktoken encoding (`TokenCounter`): the usage a provider did not report,
  always flagged estimated.

Which encoding `TokenCounter` uses, in order, never touching the network (this may run
offline, and tiktoken's own download has no timeout):
1. the requested tiktoken encoding, when its BPE file is already in tiktoken's cache
   (TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR, or the default temp cache), or it is a
   locally registered plugin encoding;
2. `cl100k_base` from the file shipped in adapters/tokenizer_data (the official file,
   checked against tiktoken's pinned sha256 when loading).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable

import tiktoken

from adapters.tokenizer_data import load_vendored_encoding
from imesh.v1 import chat_pb2, events_pb2

OFFLINE_ENCODING = "cl100k_base"
# Where tiktoken fetches its public encodings (its cache key is sha1 of the URL) and the
# files' sha256, as tiktoken_ext.openai_public pins them: a cached file that fails the
# check would make tiktoken download again, so such a file is not used.
_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
_PUBLIC_SHA256 = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# Public encodings that load another one's file (p50k_edit: p50k_base's; o200k_harmony,
# gpt-oss's: o200k_base's). Any other public encoding (gpt2) is never loaded.
_SAME_FILE_AS = {"p50k_edit": "p50k_base", "o200k_harmony": "o200k_base"}
_PUBLIC_MODULE = "tiktoken_ext.openai_public"
# Per-message framing tokens in OpenAI's chat format, and the reply primer.
_PER_MESSAGE = 3
_REPLY_PRIMER = 3
# A flat cost per image: providers price images by size, which we do not decode here.
_PER_IMAGE = 85
# Encode in a worker thread above this many characters, to keep the event loop free.
_INLINE_LIMIT = 32_000

# Cheap estimates: role markers and separators each chat message costs in the provider's
# template.
MESSAGE_OVERHEAD = 4
# Priming of the assistant's reply.
REPLY_OVERHEAD = 3
# Wrapping of one tool definition (type, function, name/description/parameters keys).
TOOL_OVERHEAD = 8
TOOL_CALL_OVERHEAD = 4
# One image, whatever its size: the high end of what providers charge (Anthropic's ~1.15
# megapixel cap is ~1,600 tokens; OpenAI's high detail on a large image is about as much).
IMAGE_TOKENS = 1_600
# OpenAI's fixed charge for a low-detail image.
IMAGE_LOW_DETAIL_TOKENS = 85
CHARS_PER_TOKEN = 4


def text_tokens(text: str) -> int:
    """~4 ASCII characters a token; other scripts pack fewer characters per token, so
    count UTF-8 bytes / 3 for them (about one token per CJK character)."""
    if not text:
        return 0
    if text.isascii():
        return -(-len(text) // CHARS_PER_TOKEN)
    return -(-len(text.encode("utf-8")) // 3)


def tokens_for_chars(chars: int) -> int:
    """A completion's tokens from the characters relayed (what a cut attempt knows)."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate_prompt_tokens(request: chat_pb2.ChatInput) -> int:
    """The prompt's size before any call: deterministic, rarely below a provider's count."""
    total = REPLY_OVERHEAD
    for message in request.messages:
        total += MESSAGE_OVERHEAD + text_tokens(message.name)
        for part in message.content:
            total += _part_tokens(part)
        for call in message.tool_calls:
            total += TOOL_CALL_OVERHEAD + text_tokens(call.name) + text_tokens(call.arguments_json)
        if message.tool_call_id:
            total += text_tokens(message.tool_call_id)
    for tool in request.tools:
        total += (
            TOOL_OVERHEAD
            + text_tokens(tool.name)
            + text_tokens(tool.description)
            + text_tokens(tool.parameters_json)
        )
    if request.response_format.json_schema:
        total += text_tokens(request.response_format.json_schema)
    return total


def _part_tokens(part: chat_pb2.ContentPart) -> int:
    which = part.WhichOneof("part")
    if which == "text":
        return text_tokens(part.text)
    if which == "image":
        # The URL (often a long data: URL) is not text the model reads.
        if part.image.detail == chat_pb2.IMAGE_DETAIL_LOW:
            return IMAGE_LOW_DETAIL_TOKENS
        return IMAGE_TOKENS
    return 0


class TokenCounter:
    """Counts tokens for one encoding name; loads the encoding once, off the event loop.

    Lifecycle: one per backend; `count_*` are cheap after the first call.
    """

    def __init__(self, encoding_name: str) -> None:
        self._requested = encoding_name
        self._encoding: tiktoken.Encoding | None = None
        self._loaded = False
        self._lock = threading.Lock()
        self.source = "unloaded"

    async def count_text(self, text: str) -> int:
        if not text:
            return 0
        encoding = await self._ensure_loaded()
        if len(text) > _INLINE_LIMIT:
            return await asyncio.to_thread(_count, encoding, text)
        return _count(encoding, text)

    async def count_prompt(self, chat: chat_pb2.ChatInput) -> int:
        """Prompt tokens of a chat input: messages, names, tool calls and tool schemas."""
        parts: list[str] = []
        images = 0
        for message in chat.messages:
            parts.append(message.name)
            for part in message.content:
                if part.HasField("image"):
                    images += 1
                else:
                    parts.append(part.text)
            for call in message.tool_calls:
                parts.extend((call.name, call.arguments_json))
        for tool in chat.tools:
            parts.extend((tool.name, tool.description, tool.parameters_json))
        counted = await self.count_text("\n".join(p for p in parts if p))
        framing = _PER_MESSAGE * len(chat.messages) + _REPLY_PRIMER
        return counted + framing + _PER_IMAGE * images

    async def estimate(
        self, chat: chat_pb2.ChatInput, completion: Iterable[str]
    ) -> events_pb2.Usage:
        """Usage counted locally for a prompt and the completion text seen so far."""
        return events_pb2.Usage(
            prompt_tokens=await self.count_prompt(chat),
            completion_tokens=await self.count_text("".join(completion)),
            estimated=True,
        )

    async def _ensure_loaded(self) -> tiktoken.Encoding | None:
        if not self._loaded:
            await asyncio.to_thread(self._load)
        return self._encoding

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._encoding, self.source = load_offline_encoding(self._requested)
            self._loaded = True


def load_offline_encoding(name: str) -> tuple[tiktoken.Encoding | None, str]:
    """(encoding or None, a label saying which counter was chosen). Never downloads."""
    registered = set(tiktoken.list_encoding_names())
    file = _SAME_FILE_AS.get(name, name)
    if file in _PUBLIC_SHA256:
        if _in_tiktoken_cache(_BLOB_URL.format(file), _PUBLIC_SHA256[file]):
            return tiktoken.get_encoding(name), f"tiktoken:{name}"
    elif name in registered and not _is_public(name):
        return tiktoken.get_encoding(name), f"tiktoken:{name}"
    return load_vendored_encoding(OFFLINE_ENCODING), f"vendored:{OFFLINE_ENCODING}"


def _count(encoding: tiktoken.Encoding | None, text: str) -> int:
    if encoding is None:
        return text_tokens(text)
    # disallowed_special=(): a prompt that mentions "<|endoftext|>" is text, not an error.
    return len(encoding.encode(text, disallowed_special=()))


def _is_public(name: str) -> bool:
    """Whether tiktoken's own public plugin (which downloads its files) defines `name`."""
    constructors = tiktoken.registry.ENCODING_CONSTRUCTORS or {}
    constructor = constructors.get(name)
    return getattr(constructor, "__module__", _PUBLIC_MODULE) == _PUBLIC_MODULE


def _in_tiktoken_cache(blob_url: str, sha256: str) -> bool:
    """Whether tiktoken.load.read_file_cached would find a good copy, without a download."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return False
    path = os.path.join(cache_dir, hashlib.sha1(blob_url.encode()).hexdigest())
    try:
        with open(path, "rb") as cached:
            return hashlib.sha256(cached.read()).hexdigest() == sha256
    except OSError:
        return False
