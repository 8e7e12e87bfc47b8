"""The native transport keeps tokenizer work off the event loop: loading the tokenizer,
and templating and tokenizing a large prompt, run on worker threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from adapters.deadline import Deadline
from imesh.v1 import chat_pb2
from tests.vllm_pool.tiny_model import write_tiny_model
from vllm_pool.grpc_replica import OFF_LOOP_PROMPT_CHARS, GrpcReplicaBackend, prompt_ids_of
from vllm_pool.prompt import PromptRenderer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


def chat(text: str) -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(
        messages=[
            chat_pb2.Message(role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text=text)])
        ]
    )


class ThreadRecorder:
    """Wraps a function; keeps the thread each call ran on."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.threads: list[threading.Thread] = []

    def __call__(self, *args: Any) -> Any:
        self.threads.append(threading.current_thread())
        return self.function(*args)


async def test_the_tokenizer_is_loaded_on_a_worker_thread(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = ThreadRecorder(PromptRenderer.from_directory)
    monkeypatch.setattr(PromptRenderer, "from_directory", load)
    backend = GrpcReplicaBackend("127.0.0.1:1", tokenizer_dir=model)
    try:
        await backend._prompt_renderer(Deadline.after(10))
    finally:
        await backend.aclose()

    assert load.threads
    assert load.threads[0] is not threading.main_thread()


async def test_a_large_prompt_is_tokenized_on_a_worker_thread(model: Path) -> None:
    renderer = PromptRenderer.from_directory(model)
    tokenize = ThreadRecorder(renderer.prompt_ids)
    renderer.prompt_ids = tokenize  # type: ignore[method-assign,assignment]

    large = await prompt_ids_of(renderer, chat("the quick brown fox " * OFF_LOOP_PROMPT_CHARS))
    small = await prompt_ids_of(renderer, chat("hello"))

    assert large
    assert small
    assert tokenize.threads[0] is not threading.main_thread()
    assert tokenize.threads[1] is threading.main_thread()  # a thread hop costs more
