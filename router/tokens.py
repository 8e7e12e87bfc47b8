"""Cheap prompt-size estimate for admission and context-window filtering, erring high.

No tokenizer: tiktoken encodings cannot be fetched here, and a real tokenizer per request
would cost more than the rest of planning. The estimate only has to be deterministic and
rarely below the provider's count; the real usage settles the books afterwards.
"""

from __future__ import annotations

from imesh.v1 import chat_pb2

# Role markers and separators each chat message costs in the provider's template.
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


def text_tokens(text: str) -> int:
    """~4 ASCII characters a token; other scripts pack fewer characters per token, so
    count UTF-8 bytes / 3 for them (about one token per CJK character)."""
    if not text:
        return 0
    if text.isascii():
        return -(-len(text) // 4)
    return -(-len(text.encode("utf-8")) // 3)


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


def estimate_prompt_tokens(request: chat_pb2.ChatInput) -> int:
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
