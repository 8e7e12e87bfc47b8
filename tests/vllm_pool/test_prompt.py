"""The native transport's prompt: the model's chat template and tokenizer, and the
incremental detokenizer."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from imesh.errors import MeshError
from imesh.v1 import chat_pb2
from tests.vllm_pool.tiny_model import write_tiny_model
from vllm_pool.prompt import PromptRenderer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


def chat(*turns: tuple[chat_pb2.Role.ValueType, str]) -> chat_pb2.ChatInput:
    return chat_pb2.ChatInput(
        messages=[
            chat_pb2.Message(role=role, content=[chat_pb2.ContentPart(text=text)])
            for role, text in turns
        ]
    )


def test_the_chat_template_is_rendered_with_a_generation_prompt(model: Path) -> None:
    renderer = PromptRenderer.from_directory(model)

    text = renderer.render(chat((chat_pb2.ROLE_SYSTEM, "be brief"), (chat_pb2.ROLE_USER, "hi")))

    assert text == "<s>system: be brief\nuser: hi\nassistant:"


def test_the_developer_role_renders_as_system(model: Path) -> None:
    renderer = PromptRenderer.from_directory(model)

    assert renderer.render(chat((chat_pb2.ROLE_DEVELOPER, "x"))).startswith("<s>system: x")


def test_artifacts_from_get_tokenizer_give_the_same_prompt_ids(model: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            out.write(model / name, name)
    request = chat((chat_pb2.ROLE_USER, "hello there"))

    from_zip = PromptRenderer.from_zip(archive.getvalue()).prompt_ids(request)

    assert from_zip == PromptRenderer.from_directory(model).prompt_ids(request)


def test_the_template_places_special_tokens_once(model: Path) -> None:
    ids = PromptRenderer.from_directory(model).prompt_ids(chat((chat_pb2.ROLE_USER, "hi")))
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))

    bos = tokenizer.token_to_id("<s>")

    assert bos is not None
    assert ids.count(bos) == 1


def test_images_are_refused(model: Path) -> None:
    request = chat_pb2.ChatInput(
        messages=[
            chat_pb2.Message(
                role=chat_pb2.ROLE_USER,
                content=[chat_pb2.ContentPart(image=chat_pb2.ImagePart(url="http://x/y.png"))],
            )
        ]
    )

    with pytest.raises(MeshError):
        PromptRenderer.from_directory(model).prompt_ids(request)


def test_streamed_ids_detokenize_to_the_whole_text(model: Path) -> None:
    renderer = PromptRenderer.from_directory(model)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    ids = tokenizer.encode(
        "pools of replicas register: héllo wörld ✓", add_special_tokens=False
    ).ids
    detokenizer = renderer.detokenizer()

    pieces = [detokenizer.add([i]) for i in ids] + [detokenizer.flush()]

    assert "".join(pieces) == tokenizer.decode(ids)


def test_an_incomplete_utf8_sequence_is_held_back(model: Path) -> None:
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    # Byte-level tokens: "✓" is three bytes, so its first token alone decodes to U+FFFD.
    ids = tokenizer.encode("✓", add_special_tokens=False).ids
    assert len(ids) > 1
    detokenizer = PromptRenderer.from_directory(model).detokenizer()

    first = detokenizer.add(ids[:1])
    rest = detokenizer.add(ids[1:])

    assert (first, rest) == ("", "✓")
