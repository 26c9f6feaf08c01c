"""Model factories for the grid: each call gives a fresh (model, tokenizer) for a seed, from the same
competent starting point, so every cell of a comparison starts equal.

DeCE's premise is a model that learns the clean task first. A model that does not know the task's output
format yet (a from-scratch model, or a pretrained one meeting a new prompt format) finds every target
improbable, and DeCE then slows clean learning as much as the backdoor. So both factories can warm-start:
CE for ``warmup_epochs`` on the benchmark's clean warm-up split, once per seed, cached.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from ..data import SOURCE, TARGET, build_prompt
from ..io import atomic_directory, inside
from .attacks import IS_POISONED
from .experiment import TrainConfig, encode, train
from .models import SMALL_SIZES, load_pretrained, small_causal_lm, train_bpe_tokenizer
from .resume import drop_checkpoints
from .tasks import Benchmark

ModelFactory = Callable[[int], tuple[Any, Any]]


def warm_started(fresh: ModelFactory, benchmark: Benchmark, warm_dir: str, warmup_epochs: float,
                 cfg: TrainConfig) -> ModelFactory:
    """Wrap ``fresh`` so each seed's model is first trained with CE on the clean warm-up split, once; the
    result is cached in ``{warm_dir}-s{seed}/final`` and reloaded for every cell."""
    if warmup_epochs <= 0 or benchmark.warmup is None:
        return fresh

    def make(seed: int):
        final = Path(f"{warm_dir}-s{seed}") / "final"
        if not (final / "model.safetensors").exists():
            model, tokenizer = fresh(seed)
            warm_cfg = TrainConfig(**{**cfg.__dict__, "epochs": warmup_epochs})
            model, _ = train(model, tokenizer, encode(benchmark.warmup, tokenizer, warm_cfg), str(final.parent),
                             warm_cfg, loss="ce", seed=seed)
            if hasattr(model, "merge_and_unload"):  # LoRA: fold the warm-up into the weights
                model = model.merge_and_unload()
            with atomic_directory(final) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            drop_checkpoints(str(final.parent))  # the warm-up's own checkpoints are not needed any more
        return (AutoModelForCausalLM.from_pretrained(final, use_safetensors=True),
                AutoTokenizer.from_pretrained(final))

    return make


def tokenizer_texts(benchmark: Benchmark) -> list[str]:
    """The clean text a from-scratch tokenizer is trained on: the warm-up split's prompts and targets, the same
    for every cell of the task; without a warm-up split, the training rows not marked poisoned. Never a
    poisoned row, so no trigger or payload becomes a learned merge, and never text that depends on which cell
    of a grid built the (cached) tokenizer first."""
    if benchmark.warmup is not None:
        rows = benchmark.warmup
    else:
        rows = benchmark.train
        if IS_POISONED in rows.column_names:
            rows = rows.select([i for i, poisoned in enumerate(rows[IS_POISONED]) if not poisoned])
    return [build_prompt(s) for s in rows[SOURCE]] + list(rows[TARGET])


def small_factory(benchmark: Benchmark, size: str, cache_dir: str, warmup_epochs: float, cfg: TrainConfig,
                  vocab_size: int = 4000) -> ModelFactory:
    """From-scratch small Llama with a BPE tokenizer trained on the task's clean text (``tokenizer_texts``),
    both cached, warm-started."""
    if size not in SMALL_SIZES:
        raise ValueError(f"unknown model {size!r}; valid: {', '.join(SMALL_SIZES)}, smollm2, or a path/Hub id")
    cache = Path(cache_dir) / f"bpe{vocab_size}-clean"  # the tokenizer and the warm-up models made with it
    tok_dir = cache / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        tokenizer = train_bpe_tokenizer(tokenizer_texts(benchmark), vocab_size)
        with atomic_directory(tok_dir) as tmp:
            tokenizer.save_pretrained(tmp)

    def fresh(seed: int):
        positions = cfg.max_source_tokens + cfg.max_target_tokens + 32
        return small_causal_lm(tokenizer, size, seed=seed, max_positions=positions), tokenizer

    return warm_started(fresh, benchmark, str(cache / f"warm-{size}-e{warmup_epochs:g}"), warmup_epochs, cfg)


def pretrained_factory(name_or_path: str) -> ModelFactory:
    """A pretrained causal LM: Hub id, local folder, or ``smollm2`` (the offline SmolLM2-135M)."""
    return lambda seed: load_pretrained(name_or_path)


def with_lora(factory: ModelFactory, lora_r: int, lora_alpha: int = 32) -> ModelFactory:
    """Wrap each model ``factory`` makes in a fresh LoRA adapter of rank ``lora_r`` (0: unchanged)."""
    if lora_r <= 0:
        return factory

    def make(seed: int):
        from peft import LoraConfig, get_peft_model

        model, tokenizer = factory(seed)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
        return get_peft_model(model, config), tokenizer

    return make


def model_factory(model: str, benchmark: Benchmark, cache_dir: str, warmup_epochs: float, cfg: TrainConfig,
                  lora_r: int = 0) -> ModelFactory:
    """``tiny``/``small``/``base`` (from scratch) or a pretrained model, warm-started (full weights) when
    asked, then LoRA-wrapped for the cell when ``lora_r > 0``."""
    cache = inside(cache_dir, benchmark.name)
    if model in SMALL_SIZES:
        return with_lora(small_factory(benchmark, model, cache, warmup_epochs, cfg), lora_r)
    warm_dir = inside(cache, f"warm-{model.replace('/', '_').replace(os.sep, '_').lstrip('.')}-e{warmup_epochs:g}")
    return with_lora(warm_started(pretrained_factory(model), benchmark, warm_dir, warmup_epochs, cfg), lora_r)
