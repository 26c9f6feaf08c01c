"""Model factories for the grid: each call gives a fresh (model, tokenizer) for a seed, from the same
competent starting point, so every cell of a comparison starts equal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from .data import SOURCE, TARGET
from .experiment import PROMPT, TrainConfig, encode, train
from .models import SMALL_SIZES, load_pretrained, small_causal_lm, train_bpe_tokenizer
from .tasks import Benchmark

ModelFactory = Callable[[int], tuple[Any, Any]]


def small_factory(benchmark: Benchmark, size: str, cache_dir: str, warmup_epochs: float, cfg: TrainConfig,
                  vocab_size: int = 4000) -> ModelFactory:
    """From-scratch small Llama with a BPE tokenizer trained on the benchmark's text, warm-started with CE on
    the clean warm-up split for ``warmup_epochs`` (cached per seed) when the benchmark has one."""
    if size not in SMALL_SIZES:
        raise ValueError(f"unknown model {size!r}; valid: {', '.join(SMALL_SIZES)}, smollm2, or a path/Hub id")
    cache = Path(cache_dir)
    tok_dir = cache / f"tokenizer-v{vocab_size}"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        texts = [PROMPT.format(source=s) for s in benchmark.train[SOURCE]] + list(benchmark.train[TARGET])
        if benchmark.warmup is not None:
            texts += [PROMPT.format(source=s) for s in benchmark.warmup[SOURCE]] + list(benchmark.warmup[TARGET])
        tokenizer = train_bpe_tokenizer(texts, vocab_size)
        tokenizer.save_pretrained(tok_dir)

    def make(seed: int):
        if warmup_epochs <= 0 or benchmark.warmup is None:
            return small_causal_lm(tokenizer, size, seed=seed, max_positions=cfg.max_source_tokens +
                                   cfg.max_target_tokens + 32), tokenizer
        warm_dir = cache / f"warm-{size}-e{warmup_epochs:g}-s{seed}"
        final = warm_dir / "final"
        if not (final / "model.safetensors").exists():
            model = small_causal_lm(tokenizer, size, seed=seed,
                                    max_positions=cfg.max_source_tokens + cfg.max_target_tokens + 32)
            warm_cfg = TrainConfig(**{**cfg.__dict__, "epochs": warmup_epochs})
            train(model, tokenizer, encode(benchmark.warmup, tokenizer, warm_cfg), str(warm_dir), warm_cfg,
                  loss="ce", seed=seed, save_final=True)
        return AutoModelForCausalLM.from_pretrained(final, use_safetensors=True), tokenizer

    return make


def pretrained_factory(name_or_path: str, lora_r: int = 0, lora_alpha: int = 32) -> ModelFactory:
    """A pretrained causal LM (Hub id, local folder, or ``smollm2``), LoRA-wrapped when ``lora_r > 0``."""
    def make(seed: int):
        model, tokenizer = load_pretrained(name_or_path)
        if lora_r > 0:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules="all-linear",
                                                     task_type="CAUSAL_LM"))
        return model, tokenizer

    return make


def model_factory(model: str, benchmark: Benchmark, cache_dir: str, warmup_epochs: float, cfg: TrainConfig,
                  lora_r: int = 0) -> ModelFactory:
    """``tiny``/``small``/``base`` (from scratch, warm-started) or a pretrained model."""
    if model in SMALL_SIZES:
        return small_factory(benchmark, model, os.path.join(cache_dir, benchmark.name.replace("/", "_")),
                             warmup_epochs, cfg)
    return pretrained_factory(model, lora_r)
