"""One benchmark cell end to end: encode, (warm-start,) train with a loss, generate, measure.

A *cell* is (dataset, attack, poison rate, loss, alpha, seed). ``run_cell`` trains in its own folder with
a checkpoint every epoch, so an interrupted cell resumes from its last checkpoint, and returns a record
with the clean and backdoor metrics on the test sets and the per-epoch probe curves on validation data.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq

from ..audit import audit_pairs
from ..callbacks import ContinueWithCE, EarlyLearningCallback
from ..callbacks.continue_ce import DECISION_FILE
from ..callbacks.continue_ce import OUTPUT_DIR as CONTINUE_DIR
from ..callbacks.continue_ce import REPORT_FILE as CONTINUE_REPORT
from ..callbacks.early_learning import report_path
from ..callbacks.example_history import auroc, precision_at_k
from ..callbacks.poison_filter import Report, as_report, drop_flagged, read_report
from ..data import SOURCE, TARGET, encode_causal, prompt_ids
from ..io import atomic_directory, write_json
from ..metrics import attack_success_rate, code_bleu, corpus_bleu, exact_match, false_trigger_rate, subtoken_f1
from ..outliers import AUDIT_CONFIDENCE
from ..trainer import DeCETrainer, DeCETrainingArguments
from ..trainer._compat import load_checkpoint_weights
from ..trainer.example_ids import add_example_ids
from .attacks import IS_POISONED
from .baselines import GCETrainer
from .grid import CONTINUE, FILTER, FILTER_FIRST_STAGE, LOSSES, ONION, Cell
from .onion import choose_onion_threshold, onion_clean, removed_share
from .resume import checkpoint_state, newest_complete_checkpoint

TRAINED_FILE = "trained.json"  # a training folder's record that its run ended: {"seconds": float, "resumed": bool}


@dataclass
class TrainConfig:
    """How one model is trained and evaluated (shared by every cell of a grid). ``audit``: the monitor's
    suspicious-example report combines the data audit of the training texts with the training signal (the report
    ``dece+filter`` and ``dece+continue`` act on); False: the training signal alone."""

    epochs: float = 3.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    grad_accum: int = 1
    max_source_tokens: int = 256
    max_target_tokens: int = 128
    max_new_tokens: int = 64
    eval_batch_size: int = 32
    probe_size: int = 64
    label_smoothing: float = 0.05
    alpha_schedule: str = "epoch"
    bf16: bool = False
    codebleu_lang: str | None = "python"
    logging_steps: int = 10
    max_test: int | None = None
    audit: bool = True
    switch_epoch: int = 1
    audit_confidence: float | None = AUDIT_CONFIDENCE
    report_to: list[str] = field(default_factory=list)


def encode(data: Dataset, tokenizer: Any, cfg: TrainConfig) -> Dataset:
    """Prompt + target + EOS as one causal sequence, labels -100 on the prompt; keeps ``is_poisoned``."""
    return encode_causal(data, tokenizer, cfg.max_source_tokens, cfg.max_target_tokens, keep=(IS_POISONED,))


def collator(tokenizer: Any) -> DataCollatorForSeq2Seq:
    """Pads ids and mask with the tokenizer, labels with -100; scalar columns (``example_id``) become tensors."""
    return DataCollatorForSeq2Seq(tokenizer, padding=True)


def loss_settings(loss: str, alpha_base: float | None, cfg: TrainConfig) -> dict[str, Any]:
    """Trainer class, DeCE settings and learning rate for a named loss (CE is DeCE with a = 1, e = 0; ``onion``
    trains as CE, its defense acts at test time; ``dece+continue`` trains as DeCE, and `train` adds the switch to
    CE). ``alpha_base`` is needed by ``dece`` and ``dece+continue`` alone."""
    if loss not in LOSSES or loss == FILTER:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(x for x in LOSSES if x != FILTER)} "
                         f"({FILTER} is a two-stage cell: run_cell trains dece, then ce)")
    settings = {"trainer": DeCETrainer, "dece_alpha_base": 1.0, "dece_label_smoothing": 0.0,
                "learning_rate": cfg.learning_rate}
    if loss in ("dece", CONTINUE):
        if alpha_base is None:
            raise ValueError(f"loss {loss!r} needs alpha_base (the cell's alpha_base, or the one derived from its "
                             "alpha_final)")
        settings.update(dece_alpha_base=alpha_base, dece_label_smoothing=cfg.label_smoothing)
    elif loss == "ls":
        settings.update(dece_label_smoothing=0.1)
    elif loss == "gce":
        settings.update(trainer=GCETrainer)
    elif loss == "lowlr":
        settings.update(learning_rate=cfg.learning_rate / 10)
    return settings


def train(model: Any, tokenizer: Any, train_data: Dataset, out_dir: str, cfg: TrainConfig, loss: str = "ce",
          alpha_base: float | None = None, seed: int = 0, probes: dict[str, Dataset] | None = None,
          payload_fn: Callable[[str], bool] | None = None, save_final: bool = False,
          audit: Any = None, timing: dict[str, Any] | None = None) -> tuple[Any, list[dict]]:
    """Train ``model`` on encoded ``train_data`` with ``loss``; resumes from a checkpoint in ``out_dir``.

    With ``probes`` (encoded clean/triggered validation sets) an EarlyLearningCallback records per-epoch
    probe NLL/BLEU/ASR and, when ``train_data`` has ``is_poisoned``, the suspicious-example ranking, combined with
    ``audit`` (the data audit's records of the same rows, ids 0..n-1 in row order) when given. ``dece+continue``
    always runs the monitor, and `ContinueWithCE` after it: DeCE to the end of epoch ``cfg.switch_epoch`` (before
    training on the audit alone for 0), then plain CE without the
    rows the monitor's report flags then, in this one run (its decision in ``out_dir/dece_continue/``).
    ``timing["resumed"]``, when ``timing`` is given, is set to whether the run resumed from a complete checkpoint,
    and ``timing["steps"]`` to the optimizer steps this call ran. A checkpoint of this run's last step (its
    ``max_steps`` the `planned_steps` of this run, its ``global_step`` there) is loaded without training: the
    Trainer would run one more step after a fractional last epoch, and the monitor would score it.
    Returns the trained model and the trainer's log history.
    """
    settings = loss_settings(loss, alpha_base, cfg)
    if len(train_data) == 0:
        raise ValueError(f"no training rows to train on in {out_dir}")
    data = add_example_ids(train_data)
    callbacks = []
    monitor = None
    if probes or loss == CONTINUE:
        monitor = EarlyLearningCallback(
            probes=probes, payload_fn=payload_fn, max_generate=cfg.probe_size, max_new_tokens=cfg.max_new_tokens,
            ground_truth_column=IS_POISONED if IS_POISONED in data.column_names else None, plots=True, audit=audit)
        callbacks.append(monitor)
    if loss == CONTINUE:
        callbacks.append(ContinueWithCE(monitor, switch_epoch=cfg.switch_epoch,
                                        audit_confidence=cfg.audit_confidence))
    # resume from the newest checkpoint that has everything (a half-written one is moved aside, with a warning)
    checkpoint = newest_complete_checkpoint(out_dir, monitor=monitor is not None)
    state = checkpoint_state(checkpoint)
    # the checkpoint is this run's last step when it planned the steps this run plans and reached them
    finished = (state is not None and state.get("max_steps") == planned_steps(len(data), cfg)
                and state["global_step"] >= state["max_steps"])
    args = DeCETrainingArguments(
        output_dir=out_dir, num_train_epochs=cfg.epochs, learning_rate=settings["learning_rate"],
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        per_device_eval_batch_size=cfg.eval_batch_size, warmup_steps=0.05, weight_decay=0.0,
        logging_steps=cfg.logging_steps, eval_strategy="epoch" if probes else "no", save_strategy="epoch",
        save_total_limit=1,
        report_to=cfg.report_to, seed=seed, data_seed=seed, bf16=cfg.bf16, use_cpu=not torch.cuda.is_available(),
        dece_alpha_base=settings["dece_alpha_base"], dece_label_smoothing=settings["dece_label_smoothing"],
        dece_alpha_schedule=cfg.alpha_schedule, disable_tqdm=False, save_only_model=False,
    )
    eval_data = next(iter(probes.values())) if probes else None
    trainer = settings["trainer"](model=model, args=args, train_dataset=data, eval_dataset=eval_data,
                                  data_collator=collator(tokenizer), processing_class=tokenizer, callbacks=callbacks)
    if finished:  # trained to the end already (stopped before what came after): the weights, no step
        load_checkpoint_weights(trainer, checkpoint)
        steps, history = state["global_step"], state["log_history"]
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
        steps, history = trainer.state.global_step, trainer.state.log_history
    if timing is not None:
        timing["resumed"] = timing.get("resumed", False) or checkpoint is not None
        timing["steps"] = steps - (state["global_step"] if state else 0)
    if steps <= 0:  # counted over the whole run, resumed or not
        raise ValueError(f"training in {out_dir} ran 0 optimizer steps ({len(data)} rows, batch size "
                         f"{cfg.batch_size} x {cfg.grad_accum} accumulation, {cfg.epochs:g} epochs): the model "
                         "learnt nothing, so its results are not recorded")
    if save_final:
        with atomic_directory(os.path.join(out_dir, "final")) as tmp:
            trainer.save_model(tmp)
    return trainer.model, history


def planned_steps(rows: int, cfg: TrainConfig) -> int:
    """The optimizer steps the Trainer plans for ``rows`` training rows in one process (its ``max_steps``):
    ``ceil(epochs x update steps per epoch)``, an epoch being ``ceil(rows / batch_size)`` batches over
    ``grad_accum``, rounded up."""
    batches = math.ceil(rows / cfg.batch_size)
    return math.ceil(cfg.epochs * max(math.ceil(batches / cfg.grad_accum), 1))


@torch.no_grad()
def generate(model: Any, tokenizer: Any, sources: list[str], cfg: TrainConfig, desc: str = "generate") -> list[str]:
    """Greedy outputs for ``sources``: continuations of the causal prompts (left-padded batches), or for an
    encoder-decoder the decoder's output for the source itself."""
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    out = []
    for start in tqdm(range(0, len(sources), cfg.eval_batch_size), desc=desc, leave=False):
        batch = sources[start:start + cfg.eval_batch_size]
        if getattr(model.config, "is_encoder_decoder", False):
            enc = tokenizer(batch, padding=True, truncation=True, max_length=cfg.max_source_tokens,
                            return_tensors="pt").to(device)
            generated = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=False)
            out += tokenizer.batch_decode(generated, skip_special_tokens=True)
            continue
        prompts = [prompt_ids(tokenizer, source, cfg.max_source_tokens) for source in batch]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                                   do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    return [text.strip() for text in out]


def evaluate(model: Any, tokenizer: Any, clean_test: Dataset, triggered_test: Dataset,
             payload_fn: Callable[[str], bool], cfg: TrainConfig) -> dict[str, float]:
    """Clean quality (BLEU, CodeBLEU, exact match, false-trigger rate) and ASR on the triggered set."""
    clean_test, triggered_test = capped(clean_test, cfg), capped(triggered_test, cfg)
    clean_out = generate(model, tokenizer, clean_test[SOURCE], cfg, "clean test")
    trig_out = generate(model, tokenizer, triggered_test[SOURCE], cfg, "triggered test")
    refs = clean_test[TARGET]
    result = {"bleu": corpus_bleu(clean_out, refs),
              "exact_match": exact_match(clean_out, refs),
              "subtoken_f1": subtoken_f1(clean_out, refs),
              "false_trigger_rate": false_trigger_rate(clean_out, payload_fn),
              "asr": attack_success_rate(trig_out, triggered_test[TARGET], payload_fn),
              "n_clean": len(clean_test), "n_triggered": len(triggered_test)}
    result["codebleu"] = code_bleu(clean_out, refs, cfg.codebleu_lang) if cfg.codebleu_lang else float("nan")
    result["examples"] = [{"source": s, "reference": r, "generation": g}
                          for s, r, g in list(zip(triggered_test[SOURCE], triggered_test[TARGET], trig_out))[:3]]
    return result


def capped(test: Dataset, cfg: TrainConfig) -> Dataset:
    """The first ``cfg.max_test`` rows of a test set (all of them without a cap)."""
    return test.select(range(min(cfg.max_test, len(test)))) if cfg.max_test else test


def onion_test_sets(model: Any, tokenizer: Any, probes: dict[str, Dataset], clean_test: Dataset,
                    triggered_test: Dataset, cfg: TrainConfig) -> tuple[Dataset, Dataset, dict[str, float]]:
    """The ``onion`` cell's test sets: ONION (``onion.py``) deletes the suspicious words of the clean and the
    triggered test sources (capped at ``cfg.max_test`` rows), its threshold chosen on the clean validation
    probe's sources. The perplexity LM is the cell's own fine-tuned ``model``, scoring the source text alone
    (no prompt): a pretrained model (``smollm2``) keeps its pretraining's LM of code and text, while a model
    trained from scratch here (``tiny``/``small``/``base``) never had a loss on sources (the prompt is masked),
    so its perplexities, and ONION with them, mean little. Returns both sets and the record's
    ``onion_threshold``, ``onion_removed_clean`` and ``onion_removed_triggered`` (shares of the sources' words
    deleted) and ``onion_seconds``."""
    if "clean" not in probes:
        raise ValueError(f"the {ONION} cell picks its threshold on clean validation sources, and this benchmark "
                         "has none: give --validation_file")
    start = time.time()
    scoring = {"batch_size": cfg.eval_batch_size, "max_tokens": cfg.max_source_tokens}
    threshold = choose_onion_threshold(model, tokenizer, list(probes["clean"][SOURCE]), **scoring)
    record, cleaned_sets = {"onion_threshold": threshold}, []
    for name, test in (("clean", capped(clean_test, cfg)), ("triggered", capped(triggered_test, cfg))):
        sources = list(test[SOURCE])
        cleaned = onion_clean(model, tokenizer, sources, threshold, **scoring)
        record[f"onion_removed_{name}"] = removed_share(sources, cleaned)
        cleaned_sets.append(test.remove_columns(SOURCE).add_column(SOURCE, cleaned))
    record["onion_seconds"] = round(time.time() - start, 1)
    return cleaned_sets[0], cleaned_sets[1], record


def epoch_curves(log_history: list[dict]) -> list[dict]:
    """Per-epoch probe and early-learning metrics from a log history (validation data)."""
    keys = ("probe_clean_bleu", "probe_triggered_asr", "probe_clean_asr", "probe_clean_nll", "probe_triggered_nll",
            "suspicious_auroc", "suspicious_precision_at_k", "suspicious_example_auroc",
            "suspicious_example_precision_at_k", "memorisation_score", "unlearned_frac", "example_loss_p50")
    rows: dict[float, dict] = {}
    for entry in log_history:
        if "epoch" in entry and any(k in entry for k in keys):
            row = rows.setdefault(round(entry["epoch"], 3), {"epoch": round(entry["epoch"], 3)})
            row.update({k: entry[k] for k in keys if k in entry})
    return list(rows.values())


def run_cell(cell: Cell, model_factory: Callable[[int], tuple[Any, Any]], train_data: Dataset,
             probes: dict[str, Dataset], clean_test: Dataset, triggered_test: Dataset,
             payload_fn: Callable[[str], bool], cfg: TrainConfig, out_dir: str,
             first_stage_dir: str | None = None) -> dict:
    """Train and evaluate one cell; returns its record (cell fields, metrics, seconds, curves, the
    suspicious-example report's ranking quality).

    A ``dece+filter`` cell trains DeCE in ``out_dir/dece`` (or reuses the report of ``first_stage_dir``, a
    finished dece cell of the same grid point), drops the rows the report flags and trains CE on the rest from
    the same starting model in ``out_dir/retrain`` (DeCE again when nothing was flagged: the filter never
    leaves a run less defended than DeCE); its record adds the filter's counts. A ``dece+continue`` cell trains one
    run, DeCE then CE without the rows flagged at the end of epoch ``cfg.switch_epoch`` (`ContinueWithCE`); its record
    adds the switch
    and the counts (``continue``) and the quality of the report the decision read. An ``onion`` cell
    trains CE and cleans the test sources with ONION before generating (``onion_test_sets``); its record adds
    the threshold and the shares of words deleted.
    """
    loss, train_dir, extra, timing = cell.loss, out_dir, {}, {"seconds": 0.0, "resumed": False}
    report = report_path(out_dir)
    if cell.loss == FILTER:
        own_first_stage = first_stage_dir is None
        if own_first_stage:
            first_stage_dir = os.path.join(out_dir, FILTER_FIRST_STAGE)
        report = report_path(first_stage_dir)
        if not os.path.isfile(report):
            _train_cell(model_factory, train_data, probes, payload_fn, cfg, first_stage_dir, "dece",
                        cell.alpha_base, cell.seed, timing)
        elif own_first_stage:  # a resumed cell keeps the report its first stage wrote, and counts its time
            first = _read_trained(first_stage_dir) or {"seconds": 0.0, "resumed": True}  # older: time unknown
            timing["seconds"] += first["seconds"]
            timing["resumed"] = timing["resumed"] or first["resumed"]
        records = read_report(report)
        train_data, decision = drop_flagged(train_data, records)
        extra.update(report_quality(records))  # the ranking the filter acted on
        # Nothing flagged: a CE retrain would be as exposed as CE, so the second stage trains DeCE again.
        loss = "ce" if decision.flagged else "dece"
        extra["filter"] = {**decision.summary(train_data_poisoned(records)),
                           "first_stage": os.path.basename(first_stage_dir),
                           "retrained_with": loss}
        train_dir = os.path.join(out_dir, "retrain")
    model, tokenizer, history = _train_cell(model_factory, train_data, probes, payload_fn, cfg, train_dir, loss,
                                            cell.alpha_base, cell.seed, timing)
    if cell.loss == ONION:
        clean_test, triggered_test, onion = onion_test_sets(model, tokenizer, probes, clean_test, triggered_test, cfg)
        extra.update(onion)
    metrics = evaluate(model, tokenizer, clean_test, triggered_test, payload_fn, cfg)
    if cell.loss == CONTINUE:
        report = os.path.join(train_dir, CONTINUE_DIR, CONTINUE_REPORT)  # the ranking the switch acted on
        extra["continue"] = continue_record(os.path.join(train_dir, CONTINUE_DIR, DECISION_FILE))
    if cell.loss != FILTER and os.path.isfile(report):
        extra.update(report_quality(read_report(report)))
    record = {**cell.record(), "key": cell.key, **{k: v for k, v in metrics.items() if k != "examples"},
              "train_seconds": round(timing["seconds"], 1), "resumed": timing["resumed"],
              "curves": epoch_curves(history), **extra,
              "examples": metrics["examples"]}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}


def continue_record(path: str) -> dict[str, Any]:
    """A ``dece+continue`` cell's ``continue`` field from its ``decision.json``: the switch (epoch, step, whether it
    switched) and the decision's counts (flagged, kept, and against the ground truth dropped_clean, kept_poisoned,
    poisoned), like a filter cell's ``filter``."""
    with open(path, encoding="utf-8") as f:
        decision = json.load(f)
    return {**decision["summary"], "switch_epoch": decision["switch_epoch"], "switch_step": decision["switch_step"],
            "switched": decision["switched"], "guard": decision.get("guard"),
            "decision_epoch": decision.get("decision_epoch", decision["switch_epoch"])}


def _train_cell(model_factory, train_data, probes, payload_fn, cfg, out_dir, loss, alpha_base, seed, timing):
    """A fresh model for ``seed``, trained with ``loss`` in ``out_dir`` (its report combined with the data audit of
    ``train_data`` when ``cfg.audit`` and a monitor runs). Adds the training's wall-clock seconds to
    ``timing["seconds"]`` (the audit and `train`, not the model factory, which may build and cache the seed's warm-up
    model) and sets ``timing["resumed"]`` when it resumed from a checkpoint (the seconds then count from the resume).

    The checkpoints stay until the cell's record is written (`resume.drop_checkpoints`): a cell stopped after
    training but before its record reloads the trained model from the last one, and ``out_dir/TRAINED_FILE``
    (written when training ends) gives it the seconds and resume flag the training itself had, not the reload's.
    Returns (model, tokenizer, log history)."""
    trained = _read_trained(out_dir)
    model, tokenizer = model_factory(seed)
    encoded = encode(train_data, tokenizer, cfg)
    encoded_probes = {name: encode(data, tokenizer, cfg) for name, data in probes.items()}
    start = time.time()
    audit = None
    if cfg.audit and len(train_data) and (probes or loss == CONTINUE):  # the runs that have a monitor
        # the audit reads the texts, which encoding drops; add_example_ids numbers the rows 0..n-1 in this order
        audit = audit_pairs(train_data[SOURCE], train_data[TARGET]).records()
    run_timing = {"resumed": False}
    model, history = train(model, tokenizer, encoded, out_dir, cfg, loss=loss, alpha_base=alpha_base,
                           seed=seed, probes=encoded_probes, payload_fn=payload_fn, audit=audit, timing=run_timing)
    if trained is None or run_timing["steps"]:  # this call trained (whole, or from a checkpoint): its clock
        trained = {"seconds": round(time.time() - start, 1), "resumed": run_timing["resumed"]}
        write_json(os.path.join(out_dir, TRAINED_FILE), trained)
    timing["seconds"] += trained["seconds"]
    timing["resumed"] = timing["resumed"] or trained["resumed"]
    return model, tokenizer, history


def _read_trained(out_dir: str) -> dict[str, Any] | None:
    """The ``TRAINED_FILE`` of a training folder whose run ended (seconds, resumed), or None."""
    try:
        with open(os.path.join(out_dir, TRAINED_FILE), encoding="utf-8") as f:
            trained = json.load(f)
    except FileNotFoundError:
        return None
    if not (isinstance(trained, dict) and isinstance(trained.get("seconds"), (int, float))
            and isinstance(trained.get("resumed"), bool)):
        raise ValueError(f"{os.path.join(out_dir, TRAINED_FILE)} is not a training record ({{'seconds': float, "
                         f"'resumed': bool}}): delete it, and the folder's checkpoints, to train the cell again")
    return trained


def train_data_poisoned(records: Report | list[dict]) -> np.ndarray | None:
    """``is_poisoned`` by example id, as a report holds it (ground truth, for the counts only); None without it."""
    report = as_report(records)
    if not len(report) or IS_POISONED not in report.fields:
        return None
    poisoned = np.zeros(int(report.example_id.max()) + 1, dtype=bool)
    poisoned[report.example_id] = report.fields[IS_POISONED] == 1
    return poisoned


def report_quality(records: Report | list[dict]) -> dict[str, float]:
    """AUROC and precision at k (k = poisoned rows) of a suspicious-example report against its ground truth: the
    ranking score (``report_*``: combined when the report holds the audit's), each signal's own where the report
    keeps it (``token_report_*``, ``audit_report_*``) and the per-example worst-token score (``example_report_*``),
    each only where the report has its field; empty without poisoned rows."""
    report = as_report(records)
    if not len(report) or IS_POISONED not in report.fields:
        return {}
    truth = report.fields[IS_POISONED] == 1
    if not truth.any():
        return {}
    k = int(truth.sum())
    out = {}
    for prefix, key in (("report", "score"), ("token_report", "token_score"), ("audit_report", "audit_score"),
                        ("example_report", "example_score")):
        if key not in report.fields:  # a signal the report does not hold (the audit's alone before training)
            continue
        scores = report.fields[key]
        out[f"{prefix}_auroc"] = auroc(scores, truth)
        out[f"{prefix}_precision_at_k"] = precision_at_k(scores, truth, k)
    return out
