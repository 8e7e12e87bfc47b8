"""A tiny Llama model directory for a real vLLM engine on CPU: config, generation config
and a byte-level BPE tokenizer with a chat template. vLLM fills the weights itself
(`--load-format dummy`), so nothing is downloaded and the directory is a few kilobytes.

The sizes are the smallest the CPU attention kernels accept (head_dim 64); text is random,
but token counts, streaming, usage, metrics and cancellation are vLLM's real ones.

The model has no end-of-sequence token: random weights would emit one every few hundred
tokens, and the tests need completions that last exactly `max_tokens` (usage they can
predict, streams still running when a test cancels them or kills their engine).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 320
BOS, PAD = "<s>", "<pad>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a circuit breaker opens after consecutive failures and probes when half open",
    "replicas register with the pool and heartbeat their load every second",
    "system: you are a helpful assistant\nuser: hello\nassistant: hi there",
] * 20


def write_tiny_model(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    bos = tokenizer.token_to_id(BOS)
    _write(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": None,
            "pad_token": PAD,
            "add_bos_token": False,
            "model_max_length": 4096,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write(
        directory / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "bos_token_id": bos,
            "eos_token_id": None,
        },
    )
    _write(
        directory / "generation_config.json",
        {"bos_token_id": bos, "_from_model_config": True},
    )
    return directory


def _write(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2))
