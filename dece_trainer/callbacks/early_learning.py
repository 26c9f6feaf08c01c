"""``EarlyLearningCallback``: watch a fine-tuning run learn its backdoor, and name the suspicious examples.

Clean data is fitted first; rare trigger -> payload examples are fitted late (under CE) or not at all
(under DeCE). The callback records every training example's mean token CE and gold-token probability,
and its least probable target tokens, once per epoch from the loss pass itself; logs how the distribution
moves; ranks examples by improbable tokens they share with other examples (`worst_tokens`); evaluates
probe sets (clean and triggered) at each evaluation; raises an alarm when the clean signal has stopped
improving while memorisation goes on; and draws the curves. Given the data audit's records (``audit=``), the report
ranks by one score combining both signals (`outliers.combine_scores`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import zlib
from typing import Any, Callable

import numpy as np
import torch
from transformers import TrainerCallback

from ..audit import AuditReport, audit_pairs
from ..io import atomic_write, write_jsonl
from ..metrics import attack_success_rate, corpus_bleu
from ..ops.token_ce import token_cross_entropy
from ..outliers import combine_scores
from ..trainer import _compat
from ..trainer.alignment import CAUSAL, SEQ2SEQ, align_targets, logits_of, model_kind
from ..trainer.example_ids import EXAMPLE_ID_COLUMN, pop_example_ids
from ..trainer.log_keys import (
    ASR,
    BLEU,
    NLL,
    SUSPICIOUS_AUDIT_AUROC,
    SUSPICIOUS_AUDIT_PRECISION_AT_K,
    SUSPICIOUS_AUROC,
    SUSPICIOUS_EXAMPLE_AUROC,
    SUSPICIOUS_EXAMPLE_PRECISION_AT_K,
    SUSPICIOUS_PRECISION_AT_K,
    SUSPICIOUS_TOKEN_AUROC,
    SUSPICIOUS_TOKEN_PRECISION_AT_K,
    probe_key,
)
from ..validation import (
    check_bool,
    check_callable,
    check_example_ids,
    check_int,
    check_name,
    check_number,
    check_probability,
)
from .example_history import ExampleHistory, auroc, precision_at_k
from .plots import plot_curves, plot_loss_histogram
from .poison_filter import as_report
from .probes import check_probes, probe_generate, probe_nll
from .worst_tokens import TokenEvidence, WorstTokens, recurrence_scores

logger = logging.getLogger(__name__)

REPORT_DIR = "early_learning"
REPORT_FILE = "suspicious.jsonl"  # in REPORT_DIR: one JSON record per training row (`report_path`)
# The monitor's entry in TrainerState.stateful_callbacks (trainer_state.json of every checkpoint). Not the class
# name: transformers' own restore (restore_callback_states_from_checkpoint=True) would rebuild a callback of that
# name from JSON arguments, dropping the probes, payload_fn and the attachment to the trainer.
STATE_KEY = "dece_trainer.EarlyLearningCallback"
STATE_VERSION = 1
_ARRAY_DTYPES = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8, "int32": np.int32}
# The arrays of finished epochs, (epochs, examples) and (epochs, examples, tokens kept), by name and dtype.
_HISTORY_ARRAYS = {"loss": "float16", "prob": "float16", "worst_prob": "float16", "visits": "uint8"}
_TOKEN_ARRAYS = {"token_ce": "float16", "token_ids": "int32", "token_prev": "int32"}
AUTO_AUDIT = "auto"  # audit=: audit the training dataset's own texts when training starts


def report_path(output_dir: str) -> str:
    """The report the monitor writes at the end of a run whose ``TrainingArguments.output_dir`` is ``output_dir``."""
    return os.path.join(output_dir, REPORT_DIR, REPORT_FILE)


class EarlyLearningCallback(TrainerCallback):
    """Per-example learning dynamics, a suspicious-example report, probe metrics and a memorisation alarm.

    With a DeCE trainer, pass it in ``callbacks``; it attaches itself. With a plain ``Trainer`` (CE), also
    call ``callback.attach(trainer)`` once. The training dataset needs an ``example_id`` column
    (`dece_trainer.add_example_ids`) of unique non-negative integers, checked when training starts; its arrays are
    sized by the number of rows, whatever the ids. It needs one example per row of a map-style dataset: TRL's
    ``packing`` and ``padding_free`` and streaming (``IterableDataset``) data are refused when training starts.

    Args:
        probes: ``{name: Dataset}`` tokenised like the training data (``input_ids``, ``labels``), e.g.
            ``{"clean": ..., "triggered": ...}``; evaluated at every evaluation.
        payload_fn: ``text -> bool``, true when a generation carries the attack payload; enables ASR.
        ground_truth_column: a boolean column of the training dataset marking poisoned rows
            (e.g. ``"is_poisoned"``); enables AUROC and precision@k of the suspicious ranking.
        fit_threshold: an example counts as fitted when its mean gold-token probability reaches this.
        max_generate: probe rows generated per evaluation (caps evaluation cost); 0 disables generation.
        max_new_tokens: generation length limit.
        patience: evaluations without improvement of the clean signal before the plateau counts.
        stop_on_memorisation: stop training when the alarm fires (an early-stopping defense).
        top_k: k of precision@k; defaults to the number of poisoned rows.
        plots: draw ``curves.png`` and ``loss_histogram.png`` at train end (needs matplotlib).
        probe_batch_size: rows per forward pass when evaluating the probes.
        audit: the data audit's evidence, combined with the monitor's into one ranking (docs/early_learning.md,
            "Combining the data audit"): an `dece_trainer.audit.AuditReport`, its ``records()``, or the path of the
            ``suspicious.jsonl`` that ``dece-trainer audit`` writes, naming the training rows by the ids the
            trainer sees (``example_id``; audit after `add_example_ids`); or ``"auto"`` (``True``) to audit the
            training dataset's own texts (`dece_trainer.data.pair_texts`: source/target, prompt/completion or
            chat ``messages`` columns, which must still be there) when training starts. Records whose ids are not
            exactly the training rows' ids are refused, naming them. The report's ``score`` is then the combined
            score, ``token_score``, ``audit_score`` and ``audit_evidence`` are each signal's own; with a ground
            truth column each signal's ranking is logged too (``suspicious_token_*``, ``suspicious_audit_*``).
            ``None`` (default): the monitor's evidence alone.

    Every argument is checked here, when the callback is built (a report path is read here too).

    Checkpoints: its state (every finished epoch's per-example arrays, the accumulators of an epoch in
    progress, the clean signal and the alarm) goes into the trainer state (``TrainerState.stateful_callbacks``,
    i.e. each checkpoint's ``trainer_state.json``; arrays as base64 of their zlib-compressed little-endian bytes,
    read back with ``numpy.frombuffer``, never unpickled) whenever the trainer is about to save, and comes back in
    ``on_train_begin`` of a run resumed with ``trainer.train(resume_from_checkpoint=...)``: the callback you passed
    keeps its probes and ``payload_fn`` and reports what an uninterrupted run reports (an ``"auto"`` audit is
    computed again, the same from the same rows; records or a path given are used as given). It needs no
    ``restore_callback_states_from_checkpoint``. A saved state is read within what this run expects (its number of
    rows, the tokens kept per row, at most its number of epochs) before anything is inflated; anything else is
    refused with one error naming the checkpoint.
    """

    def __init__(self, probes: dict[str, Any] | None = None, payload_fn: Callable[[str], bool] | None = None,
                 ground_truth_column: str | None = None, fit_threshold: float = 0.5, max_generate: int = 32,
                 max_new_tokens: int = 64, patience: int = 2, stop_on_memorisation: bool = False,
                 top_k: int | None = None, plots: bool = True, probe_batch_size: int = 16, audit: Any = None):
        self.probes = check_probes(probes)
        self.payload_fn = check_callable(payload_fn, "payload_fn", "text -> bool", allow_none=True)
        self.ground_truth_column = check_name(ground_truth_column, "ground_truth_column", allow_none=True)
        self.fit_threshold = check_probability(fit_threshold, "fit_threshold")
        self.max_generate = check_int(max_generate, "max_generate", minimum=0)
        self.max_new_tokens = check_int(max_new_tokens, "max_new_tokens", minimum=1)
        self.patience = check_int(patience, "patience", minimum=1)
        self.stop_on_memorisation = check_bool(stop_on_memorisation, "stop_on_memorisation")
        self.top_k = check_int(top_k, "top_k", minimum=1, allow_none=True)
        self.plots = check_bool(plots, "plots")
        self.probe_batch_size = check_int(probe_batch_size, "probe_batch_size", minimum=1)
        self._audit_input = _audit_input(audit)
        self.audit_scores: np.ndarray | None = None  # (n,) the audit's score of each history row
        self.audit_evidence: list[Any] | None = None  # its evidence (None where it has none)
        self.history: ExampleHistory | None = None
        self.tokens: WorstTokens | None = None
        self.poisoned: np.ndarray | None = None
        self.alarm_step: int | None = None
        self._trainer = None
        self._uses_listener = False
        self._hooks: list[Any] = []
        self._pending_ids: torch.Tensor | None = None
        self._row_ids: np.ndarray | None = None  # sorted example ids when they are not 0..n-1 (row i has id [i])
        self._row_table: torch.Tensor | None = None  # the same on the batches' device
        self._clean_signal: list[tuple[int, float]] = []
        self._memorisation: list[int] = []

    # ---- wiring -----------------------------------------------------------------------------------

    def attach(self, trainer: Any) -> None:
        """Connect to ``trainer``: DeCE trainers hand over their per-token statistics; other trainers get
        forward hooks that compute per-token CE from the logits they already produce. Idempotent."""
        if self._trainer is trainer:
            return
        self._trainer = trainer
        listeners = getattr(trainer, "token_stats_listeners", None)
        if listeners is not None:
            self._uses_listener = True
            listeners.append(self._on_token_stats)
        else:
            _compat.keep_signature_column(trainer, EXAMPLE_ID_COLUMN)
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)

    def _install_hooks(self, model: torch.nn.Module) -> None:
        kind = model_kind(model)

        def pre_hook(module, args, kwargs):
            self._pending_ids = pop_example_ids(kwargs)
            return args, kwargs

        def post_hook(module, args, kwargs, output):
            labels = kwargs.get("labels")
            if not module.training or labels is None:
                return
            with torch.no_grad():
                logits = logits_of(output, module).detach()
                stats = token_cross_entropy(logits, align_targets(logits, labels, kind))
            self._on_token_stats(self._pending_ids, stats)

        self._hooks = [model.register_forward_pre_hook(pre_hook, with_kwargs=True),
                       model.register_forward_hook(post_hook, with_kwargs=True)]

    def _on_token_stats(self, example_ids: torch.Tensor | None, stats: Any) -> None:
        if self.history is None:
            return
        if example_ids is None:
            raise ValueError(f"training batches carry no `{EXAMPLE_ID_COLUMN}`: add it with "
                             "dece_trainer.add_example_ids(train_dataset) and use a collator that keeps it")
        if example_ids.numel() != stats.token_ce.shape[0]:
            raise ValueError(f"a training batch carries {example_ids.numel()} example ids for "
                             f"{stats.token_ce.shape[0]} rows: its collator packs or flattens examples (packing, "
                             "padding-free), and EarlyLearningCallback needs one example per row")
        rows = self._rows(example_ids)
        self.history.add(rows, stats.token_ce, stats.mask)
        labels = getattr(stats, "labels", None)
        if labels is not None:
            self.tokens.add(rows, stats.token_ce, stats.mask, labels)

    def _rows(self, example_ids: torch.Tensor) -> torch.Tensor:
        """The history rows of a batch's example ids (the ids themselves when they are 0..n-1)."""
        ids = example_ids.reshape(-1).long()
        if self._row_ids is None:
            return ids
        if self._row_table is None or self._row_table.device != ids.device:
            self._row_table = torch.from_numpy(self._row_ids).to(ids.device)
        rows = torch.searchsorted(self._row_table, ids).clamp_(max=self._row_table.numel() - 1)
        unknown = self._row_table[rows] != ids
        if bool(unknown.any()):
            raise ValueError(f"a training batch carries example ids that are not in the training dataset's "
                             f"`{EXAMPLE_ID_COLUMN}` column: {ids[unknown][:5].tolist()}")
        return rows

    def example_id(self, row: int) -> int:
        """The example id of history row ``row``."""
        return int(row) if self._row_ids is None else int(self._row_ids[row])

    # ---- training events --------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        trainer = self._trainer
        if trainer is None:
            raise ValueError("EarlyLearningCallback is not attached: with a plain Trainer call "
                             "callback.attach(trainer) after building it (DeCE trainers attach it themselves)")
        data = trainer.train_dataset
        _check_layout(trainer, args, data)
        columns = getattr(data, "column_names", None) or []
        if EXAMPLE_ID_COLUMN not in columns:
            raise ValueError(f"the training dataset has no `{EXAMPLE_ID_COLUMN}` column: "
                             "train_dataset = dece_trainer.add_example_ids(train_dataset)")
        if self.ground_truth_column is not None and self.ground_truth_column not in columns:
            raise ValueError(f"ground_truth_column {self.ground_truth_column!r} is not a column of the "
                             f"training dataset (columns: {columns})")
        ids = check_example_ids(data[EXAMPLE_ID_COLUMN], EXAMPLE_ID_COLUMN)
        ordered = np.sort(ids)
        # memory by rows, not by the largest id: ids other than 0..n-1 (kept from a larger dataset) map to rows
        self._row_ids = None if ordered.size == 0 or ordered[-1] == ordered.size - 1 else ordered
        self._row_table = None
        self.history = ExampleHistory(len(ids), self.fit_threshold)
        self.tokens = WorstTokens(self.history.num_examples)
        if self.ground_truth_column is not None:
            rows = ids if self._row_ids is None else np.searchsorted(self._row_ids, ids)
            self.poisoned = np.zeros(self.history.num_examples, dtype=bool)
            self.poisoned[rows] = np.asarray(data[self.ground_truth_column], dtype=bool)
        if self._audit_input is not None:
            self._align_audit(data, ids)
        if not self._uses_listener and not self._hooks:
            self._install_hooks(trainer.model)
        if state.global_step > 0:  # resumed from a checkpoint: go on from the monitor's state saved in it
            record = (getattr(state, "stateful_callbacks", None) or {}).get(self._state_key())
            if record is not None:
                self._restore(record, state)
            else:
                logger.warning("resuming at step %d from a checkpoint without the early-learning monitor's state "
                               "(saved by an older dece-trainer, or without this callback): its per-example history "
                               "starts afresh, so the suspicious ranking covers only the epochs trained from here",
                               state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the trainer saves a checkpoint after this step
            self._save_state(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._close_epoch(state)
        if control.should_save:
            self._save_state(state)

    def _close_epoch(self, state) -> None:
        summary = self.history.end_epoch(_all_reduce_fn())
        self.tokens.end_epoch(_all_reduce_fn(), _rank())
        logs = {f"example_loss_p{q}": v for q, v in summary.loss_quantiles.items()}
        logs.update(unlearned_frac=summary.unlearned_frac, memorisation_score=float(summary.memorisation_score),
                    examples_seen=float(summary.seen))
        logs.update(self._ranking_metrics())
        self._memorisation.append(summary.memorisation_score)
        self._trainer.log(logs)

    def _ranking_metrics(self) -> dict[str, float]:
        if self.poisoned is None or not self.poisoned.any():
            return {}
        k = self.top_k or int(self.poisoned.sum())
        monitor, _, example = self._monitor_scores()
        score = self._combined(monitor)
        out = {SUSPICIOUS_AUROC: auroc(score, self.poisoned),
               SUSPICIOUS_PRECISION_AT_K: precision_at_k(score, self.poisoned, k),
               SUSPICIOUS_EXAMPLE_AUROC: auroc(example["score"], self.poisoned),
               SUSPICIOUS_EXAMPLE_PRECISION_AT_K: precision_at_k(example["score"], self.poisoned, k)}
        if self.audit_scores is not None:
            out.update({SUSPICIOUS_TOKEN_AUROC: auroc(monitor, self.poisoned),
                        SUSPICIOUS_TOKEN_PRECISION_AT_K: precision_at_k(monitor, self.poisoned, k),
                        SUSPICIOUS_AUDIT_AUROC: auroc(self.audit_scores, self.poisoned),
                        SUSPICIOUS_AUDIT_PRECISION_AT_K: precision_at_k(self.audit_scores, self.poisoned, k)})
        return out

    def _scores(self) -> tuple[np.ndarray, TokenEvidence | None, dict[str, np.ndarray]]:
        """(ranking score (n,), token evidence, per-example scores), NaN for examples never seen: the monitor's
        own score (`_monitor_scores`), combined with the audit's where the callback has one (`_combined`)."""
        monitor, evidence, example = self._monitor_scores()
        return self._combined(monitor), evidence, example

    def _monitor_scores(self) -> tuple[np.ndarray, TokenEvidence | None, dict[str, np.ndarray]]:
        """(the monitor's score (n,), token evidence, per-example scores), NaN for examples never seen. The score
        is the token score (`recurrence_scores`) where the loss pass handed over target ids (evidence is None
        otherwise), else the per-example worst-token score (`ExampleHistory.suspicion_scores`)."""
        example = self.history.suspicion_scores()
        has_tokens = self.tokens.num_epochs > 0 and any((ids >= 0).any() for ids in self.tokens.ids)
        evidence = recurrence_scores(self.tokens) if has_tokens else None
        return (evidence.score if evidence is not None else example["score"]), evidence, example

    def _combined(self, monitor: np.ndarray) -> np.ndarray:
        """The ranking score: ``monitor`` alone without an audit, else `outliers.combine_scores` of it and the
        audit's score (NaN where the monitor never saw the row, as without the audit)."""
        return monitor if self.audit_scores is None else combine_scores([monitor, self.audit_scores])

    def _align_audit(self, data: Any, ids: np.ndarray) -> None:
        """The audit's score and evidence of each history row (`audit_scores`, `audit_evidence`), from the records
        given or, for ``"auto"``, from auditing the training rows' texts now; refused when the records' ids are not
        exactly the training rows' ids."""
        if isinstance(self._audit_input, str):  # AUTO_AUDIT
            from ..data import pair_texts

            try:
                sources, targets = pair_texts(data)
            except ValueError as err:
                # pair_texts' own advice names its column arguments, which this callback does not take
                detail = str(err) if str(err).startswith("row ") else f"its columns are {list(data.column_names)}"
                raise ValueError(f"audit='auto' audits the training rows' texts, but the training dataset holds none "
                                 f"that dece_trainer.data.pair_texts reads ({detail}). Keep its source/target, "
                                 "prompt/completion or messages columns, or audit the rows before tokenising them and "
                                 "pass the records: audit=dece_trainer.audit.audit_dataset(raw_train, "
                                 "id_column='example_id'), raw_train carrying the ids add_example_ids gave the "
                                 "training rows") from None
            audit_ids, scores, evidence = _records_columns(audit_pairs(sources, targets, ids.tolist()).records())
        else:
            audit_ids, scores, evidence = self._audit_input
        foreign = audit_ids[~np.isin(audit_ids, ids)]
        missing = ids[~np.isin(ids, audit_ids)]
        if foreign.size or missing.size:
            faults = []
            if foreign.size:
                faults.append(f"{foreign.size} of their {audit_ids.size} example ids are not training rows' ids"
                              f"{_some(foreign)}")
            if missing.size:
                faults.append(f"{missing.size} of the {ids.size} training rows have no record{_some(missing)}")
            raise ValueError(f"the audit's records do not name the training rows: {' and '.join(faults)}. Audit the "
                             "training dataset itself, after add_example_ids (dece_trainer.audit.audit_dataset(train, "
                             "id_column='example_id'), or audit='auto')")
        rows = audit_ids if self._row_ids is None else np.searchsorted(self._row_ids, audit_ids)
        self.audit_scores = np.full(self.history.num_examples, np.nan)
        self.audit_scores[rows] = scores
        self.audit_evidence = [None] * self.history.num_examples
        for row, item in zip(rows.tolist(), evidence):
            self.audit_evidence[row] = item

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if self._trainer is None or self.history is None:
            return
        self._evaluate(state, control, metrics, model, processing_class)
        if getattr(args, "save_strategy", None) == "best":  # the trainer decides after this whether to save
            self._save_state(state)

    def _evaluate(self, state, control, metrics, model, processing_class) -> None:
        logs = self._probe_metrics(model, processing_class) if self.probes else {}
        signal = logs.get(probe_key("clean", NLL), (metrics or {}).get("eval_loss"))
        if signal is not None:
            self._clean_signal.append((state.global_step, float(signal)))
        if self._memorisation_alarm(state):
            logs["memorisation_alarm"] = 1.0
            if self.stop_on_memorisation:
                control.should_training_stop = True
        if logs:
            self._trainer.log(logs)

    def _probe_metrics(self, model, tokenizer) -> dict[str, float]:
        kind = model_kind(model)
        was_training = model.training
        model.eval()
        logs = {}
        try:
            pad_id = getattr(tokenizer, "pad_token_id", None)
            pad_id = pad_id if pad_id is not None else getattr(model.config, "pad_token_id", 0) or 0
            for name, data in self.probes.items():
                logs[probe_key(name, NLL)] = probe_nll(model, data, kind, pad_id, self.probe_batch_size)
                if tokenizer is None or self.max_generate <= 0 or kind not in (CAUSAL, SEQ2SEQ):
                    continue
                generations, references = probe_generate(model, tokenizer, data, kind, self.max_generate,
                                                         self.max_new_tokens, self.probe_batch_size)
                logs[probe_key(name, BLEU)] = corpus_bleu(generations, references)
                if self.payload_fn is not None:
                    logs[probe_key(name, ASR)] = attack_success_rate(generations, references, self.payload_fn)
        finally:
            model.train(was_training)
        return logs

    def _memorisation_alarm(self, state) -> bool:
        """Clean signal flat for ``patience`` evaluations, train loss still falling, memorisation rising."""
        if self.alarm_step is not None or len(self._clean_signal) <= self.patience or not self._memorisation:
            return self.alarm_step is not None and self.stop_on_memorisation
        values = [v for _, v in self._clean_signal]
        plateau = min(values[-self.patience:]) >= min(values[:-self.patience])
        since = self._clean_signal[-self.patience - 1][0]
        train = [(e["step"], e["loss"]) for e in state.log_history if "loss" in e and "step" in e]
        before = [loss for step, loss in train if step <= since]
        falling = bool(before) and train[-1][1] < before[-1]
        rising = self._memorisation[-1] > 0 and (len(self._memorisation) < 2 or
                                                 self._memorisation[-1] >= self._memorisation[-2])
        if plateau and falling and rising:
            self.alarm_step = state.global_step
            logger.warning("early-learning alarm at step %d: the clean signal has not improved for %d evaluations "
                           "while training loss keeps falling and %d examples were newly memorised: the model is "
                           "probably fitting poisoned examples now", state.global_step, self.patience,
                           self._memorisation[-1])
            return True
        return False

    def on_train_end(self, args, state, control, **kwargs):
        if self.history is None:
            return
        if self.history.epoch_in_progress:  # a run stopped mid-epoch: keep what it saw
            self._close_epoch(state)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.history.num_epochs == 0 or not state.is_world_process_zero:
            return
        out_dir = os.path.join(args.output_dir, REPORT_DIR)
        self.write_report(report_path(args.output_dir))
        if self.plots:
            drew = plot_curves(state.log_history, os.path.join(out_dir, "curves.png"))
            drew = plot_loss_histogram(self.history, os.path.join(out_dir, "loss_histogram.png"),
                                       self.poisoned) and drew
            if not drew:
                logger.info("matplotlib is not installed: skipping the early-learning pictures "
                            "(pip install 'dece-trainer[plots]')")

    # ---- checkpoints ------------------------------------------------------------------------------

    def _state_key(self) -> str:
        """``STATE_KEY``, numbered from the second monitor on one trainer."""
        callbacks = self._trainer.callback_handler.callbacks if self._trainer is not None else [self]
        mine = [c for c in callbacks if isinstance(c, EarlyLearningCallback)]
        index = next((i for i, c in enumerate(mine) if c is self), 0)
        return STATE_KEY if index == 0 else f"{STATE_KEY}#{index}"

    def _save_state(self, state) -> None:
        """Put the monitor's state into ``state.stateful_callbacks`` (saved with the checkpoint the trainer is
        about to write). Called on every process (combining an epoch in progress is a collective)."""
        if self.history is None:
            return
        arrays = self.history.state_arrays(_all_reduce_fn())
        arrays.update(self.tokens.state_arrays(_all_reduce_fn(), _rank()))
        epoch = float(state.epoch or 0.0)
        state.stateful_callbacks[self._state_key()] = {
            "version": STATE_VERSION, "global_step": int(state.global_step), "epoch": epoch,
            "num_examples": self.history.num_examples, "example_ids_sha256": self._ids_digest(),
            "fit_threshold": self.history.fit_threshold,
            "arrays": {name: _encode_array(value) for name, value in arrays.items()},
            # an epoch whose last step was just taken: the resumed run starts the next one, so it closes this one
            "epoch_complete": "partial_sums" in arrays and abs(epoch - round(epoch)) < 1e-6 and epoch > 0,
            "clean_signal": [[int(step), float(value)] for step, value in self._clean_signal],
            "memorisation": [int(m) for m in self._memorisation], "alarm_step": self.alarm_step,
        }

    def _ids_digest(self) -> str:
        """A short SHA-256 of the training rows' example ids, in row order (what a resumed run must match)."""
        ids = np.arange(self.history.num_examples, dtype="<i8") if self._row_ids is None else self._row_ids
        return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()[:16]

    def _restore(self, record: Any, state) -> None:
        step = getattr(state, "global_step", None)
        where = (f"the early-learning state in the checkpoint at step {step} (checkpoint-{step}/trainer_state.json, "
                 f"stateful_callbacks[{self._state_key()!r}])")
        try:
            arrays = self._read_record(record, state)
            owns_partial = _rank() == 0
            self.history.load_state_arrays({k: v for k, v in arrays.items() if not k.startswith("token_")},
                                           owns_partial_sums=owns_partial)
            self.tokens.load_state_arrays({k: v for k, v in arrays.items() if k.startswith("token_")}, owns_partial)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if record["global_step"] != state.global_step:
            logger.warning("the early-learning state in this checkpoint is from step %d, the checkpoint from step %d: "
                           "per-example statistics of the steps in between are missing", record["global_step"],
                           state.global_step)
        self._clean_signal = [(int(step), float(value)) for step, value in record.get("clean_signal", [])]
        self._memorisation = [int(m) for m in record.get("memorisation", [])]
        self.alarm_step = record.get("alarm_step")
        if record.get("epoch_complete") and self.history.epoch_in_progress:
            self._close_epoch(state)  # an uninterrupted run closed it right after the checkpoint
        logger.info("early-learning monitor resumed at step %d with %d finished epochs", state.global_step,
                    self.history.num_epochs)

    def _read_record(self, record: Any, state) -> dict[str, np.ndarray]:
        """The arrays of a saved state, once its fields are checked and every array is bounded by this run: rows,
        tokens kept per row, and at most this run's number of epochs. Raises ValueError saying what is wrong."""
        if not isinstance(record, dict):
            raise ValueError(f"it is a {type(record).__name__}, not a JSON object")
        missing = [key for key in ("version", "num_examples", "global_step", "arrays") if key not in record]
        if missing:
            raise ValueError(f"it lacks {missing} (keys: {sorted(record)[:12]})")
        if record["version"] != STATE_VERSION:
            raise ValueError(f"it has version {record['version']!r}, this dece-trainer reads version {STATE_VERSION}")
        num_examples = check_int(record["num_examples"], "num_examples", minimum=1)
        if num_examples != self.history.num_examples:
            raise ValueError(f"it covers {num_examples} training examples but this training set has "
                             f"{self.history.num_examples}: resume with the same training data (and example ids)")
        digest = record.get("example_ids_sha256")  # absent from checkpoints of dece-trainer 0.2 and before
        if digest is not None and digest != self._ids_digest():
            raise ValueError(f"it covers {num_examples} training examples with other example ids than this training "
                             "set's (`example_ids_sha256` differs): resume with the same training data and example "
                             "ids, so each row's statistics stay that row's")
        check_int(record["global_step"], "global_step", minimum=0)
        if "epoch" in record:
            check_number(record["epoch"], "epoch", low=0.0)
        if "fit_threshold" in record:
            check_probability(record["fit_threshold"], "fit_threshold")
        check_bool(record.get("epoch_complete", False), "epoch_complete")
        signal = record.get("clean_signal", [])
        if not isinstance(signal, list) or not all(isinstance(p, list) and len(p) == 2 for p in signal):
            raise ValueError(f"`clean_signal` must be a list of [step, value] pairs, got {str(signal)[:80]}")
        for step, value in signal:
            check_int(step, "clean_signal step", minimum=0)
            check_number(value, "clean_signal value")
        memorisation = record.get("memorisation", [])
        if not isinstance(memorisation, list):
            raise ValueError(f"`memorisation` must be a list of counts, got {str(memorisation)[:80]}")
        for count in memorisation:
            check_int(count, "memorisation count", minimum=0)
        check_int(record.get("alarm_step"), "alarm_step", minimum=0, allow_none=True)
        arrays = record["arrays"]
        if not isinstance(arrays, dict):
            raise ValueError(f"`arrays` must be a JSON object of arrays, got {type(arrays).__name__}")
        expected = self._expected_arrays(arrays, _planned_epochs(state))
        unknown = sorted(set(arrays) - set(expected))
        if unknown:
            raise ValueError(f"it holds arrays {unknown} that this run does not keep (it keeps {sorted(expected)})")
        return {name: _decode_array(value, name, expected[name]) for name, value in arrays.items()}

    def _expected_arrays(self, arrays: dict, max_epochs: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype, shape) of every array this run's state may hold; finished epochs are counted by the
        state's own ``loss`` and ``token_ce`` and may not exceed ``max_epochs``."""
        n, m = self.history.num_examples, self.tokens.per_example
        out = {"partial_sums": ("float32", (3, n)), "partial_worst": ("float32", (n,)),
               "token_partial": ("float32", (3, n, m))}
        for first, names, row in (("loss", _HISTORY_ARRAYS, (n,)), ("token_ce", _TOKEN_ARRAYS, (n, m))):
            if first not in arrays:
                continue
            shape = arrays[first].get("shape") if isinstance(arrays[first], dict) else None
            epochs = shape[0] if isinstance(shape, list) and shape else None
            if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= max_epochs:
                raise ValueError(f"array `{first}` declares {epochs!r} finished epochs, but this run trains at most "
                                 f"{max_epochs} (num_train_epochs): resume with at least as many epochs")
            out.update({name: (dtype, (epochs, *row)) for name, dtype in names.items()})
        return out

    # ---- report -----------------------------------------------------------------------------------

    @property
    def has_audit(self) -> bool:
        """Whether the monitor combines the data audit with its own evidence (``audit=`` given)."""
        return self._audit_input is not None

    def audit_records(self) -> list[dict]:
        """The data audit's ranking of the training rows before any training: one record per row, highest
        ``score`` (the audit's) first, with ``rank``, ``example_id``, ``audit_score``, ``audit_evidence`` where the
        audit has one, and the ground truth where the monitor has one: what `ContinueWithCE` decides on at
        ``switch_epoch=0``. Needs the audit (``audit=``) and the training rows (after ``on_train_begin``)."""
        if not self.has_audit:
            raise ValueError("the monitor has no data audit to rank the rows by before training: build it with "
                             "EarlyLearningCallback(audit=...) (the audit's records, or 'auto')")
        if self.audit_scores is None:
            raise ValueError("the monitor aligns its audit with the training rows when training begins: call "
                             "audit_records() after on_train_begin")
        records = []
        order = np.argsort(-self.audit_scores, kind="mergesort")
        for rank, i in enumerate(order.tolist(), start=1):
            record = {"rank": rank, EXAMPLE_ID_COLUMN: self.example_id(i), "score": float(self.audit_scores[i]),
                      "audit_score": float(self.audit_scores[i])}
            if self.audit_evidence[i] is not None:
                record["audit_evidence"] = self.audit_evidence[i]
            if self.poisoned is not None:
                record[self.ground_truth_column] = bool(self.poisoned[i])
            records.append(record)
        return records

    def write_report(self, path: str) -> list[dict]:
        """Write the suspicious-example ranking as JSON Lines (atomically) and return its records. With an audit,
        ``score`` is the combined score and each record also holds ``token_score`` (the monitor's own),
        ``audit_score`` and, where the audit has one, ``audit_evidence`` (the audit record's ``evidence``)."""
        monitor, evidence, scores = self._monitor_scores()
        score = self._combined(monitor)
        tokenizer = getattr(self._trainer, "processing_class", None) if self._trainer is not None else None
        order = [i for i in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="mergesort")
                 if not math.isnan(score[i])]
        records = []
        for rank, i in enumerate(order, start=1):
            record = {"rank": rank, EXAMPLE_ID_COLUMN: self.example_id(i), "score": round(float(score[i]), 6)}
            if self.audit_scores is not None:
                record.update(token_score=round(float(monitor[i]), 6), audit_score=float(self.audit_scores[i]))
                if self.audit_evidence[i] is not None:  # absent, not null: a report's first rows type its fields
                    record["audit_evidence"] = self.audit_evidence[i]
            record.update({"tokens": _token_records(evidence, i, tokenizer) if evidence is not None else [],
                           "example_score": round(float(scores["score"][i]), 6),
                           "mean_worst_nll": round(float(scores["mean_worst_nll"][i]), 6),
                           "max_drop": round(float(scores["max_drop"][i]), 6),
                           "late_drop": round(float(scores["late_drop"][i]), 6),
                           "fit_epoch": int(scores["fit_epoch"][i]),
                           "final_worst_token_prob": round(float(scores["final_prob"][i]), 6),
                           "final_mean_gold_prob": round(float(self.history.prob[-1][i]), 6)})
            if self.poisoned is not None:
                record[self.ground_truth_column] = bool(self.poisoned[i])
            records.append(record)
        write_jsonl(path, records)
        if self.tokens.num_epochs:
            def write_arrays(tmp: str) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, ce=np.stack(self.tokens.ce), ids=np.stack(self.tokens.ids),
                             prev=np.stack(self.tokens.prev),
                             poisoned=self.poisoned if self.poisoned is not None else np.zeros(0, dtype=bool),
                             example_ids=np.arange(self.history.num_examples, dtype=np.int64)
                             if self._row_ids is None else self._row_ids)
            atomic_write(os.path.join(os.path.dirname(path), "worst_tokens.npz"), write_arrays)
        return records


def _audit_input(audit: Any) -> str | tuple[np.ndarray, np.ndarray, list[Any]] | None:
    """The ``audit`` argument checked: None, `AUTO_AUDIT`, or the records' (example ids, scores, evidence)."""
    if audit is None or audit is False:
        return None
    if audit is True or (isinstance(audit, str) and audit == AUTO_AUDIT):
        return AUTO_AUDIT
    if isinstance(audit, AuditReport):
        return _records_columns(audit.records())
    if isinstance(audit, (str, os.PathLike)):
        path = os.fspath(audit)
        if not os.path.isfile(path):
            raise ValueError(f"`audit` {path!r} is not a file: give the suspicious.jsonl that `dece-trainer audit` "
                             "writes, its records, an AuditReport, or 'auto'")
        from .poison_filter import read_report

        report = read_report(path)  # checked line by line, naming the line at fault
        with open(path, encoding="utf-8") as f:
            evidence = [json.loads(line).get("evidence") for line in f if line.strip()]
        return _checked_columns(report.example_id, report, evidence)
    if isinstance(audit, (list, tuple)):
        return _records_columns(list(audit))
    raise ValueError(f"`audit` must be an AuditReport, its records (a list of dicts), the path of its "
                     f"suspicious.jsonl, 'auto' (True) or None, got {type(audit).__name__}")


def _records_columns(records: list[Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(example ids, scores, evidence) of audit records (dicts with ``example_id``, ``score``, ``evidence``)."""
    report = as_report(records, "audit")
    return _checked_columns(report.example_id, report, [r.get("evidence") for r in records])


def _checked_columns(ids: np.ndarray, report: Any, evidence: list[Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    if not len(report):
        raise ValueError(f"`audit`: the audit's records {report.name} hold no rows")
    scores = report.column("score", "audit")
    if scores.dtype == bool:
        raise ValueError(f"`audit`: `score` of the audit's records {report.name} is true/false, not a score")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"`audit`: {report.where(int(bad[0]))}: `score` must be a finite number, got "
                         f"{report.value(int(bad[0]), 'score')!r} ({bad.size} rows without a finite score)")
    return ids, scores.astype(np.float64), evidence


def _some(ids: np.ndarray) -> str:
    """`` (e.g. 3, 7, ...)`` for messages: the first five ``ids``, ascending; empty for none."""
    if not ids.size:
        return ""
    first = ", ".join(str(i) for i in np.sort(ids)[:5].tolist())
    return f" (e.g. {first}{', ...' if ids.size > 5 else ''})"


def _token_records(evidence, i: int, tokenizer) -> list[dict]:
    """The tokens behind example ``i``'s token score: id, text (when a tokenizer is known) and weight (nats)."""
    out = []
    for token, weight in zip(evidence.tokens[i], evidence.weights[i]):
        if token < 0:
            break
        record = {"id": int(token), "weight": round(float(weight), 4)}
        if tokenizer is not None and hasattr(tokenizer, "decode"):
            record["text"] = tokenizer.decode([int(token)])
        out.append(record)
    return out


def _encode_array(value: np.ndarray) -> dict:
    """A numpy array as JSON: dtype, shape and the base64 of its zlib-compressed little-endian bytes (the token
    ids of the worst-token arrays repeat a lot: 2-5x smaller on the benchmark's runs)."""
    dtype = np.dtype(value.dtype).newbyteorder("<")
    if value.dtype.name not in _ARRAY_DTYPES:
        raise ValueError(f"cannot save a {value.dtype} array in the early-learning state")
    data = zlib.compress(np.ascontiguousarray(value, dtype=dtype).tobytes(), 6)
    return {"dtype": value.dtype.name, "shape": list(value.shape),
            "zlib_base64": base64.b64encode(data).decode("ascii")}


def _decode_array(record: Any, name: str, expected: tuple[str, tuple[int, ...]] | None = None) -> np.ndarray:
    """The inverse of `_encode_array`, for the allowed dtypes only (no pickle, no object arrays); also reads the
    uncompressed ``base64`` field of checkpoints written by 0.2.0. With ``expected`` (dtype name, shape) the
    declared array must be that one; nothing is decoded or inflated past its size."""
    try:
        if not isinstance(record, dict):
            raise TypeError(f"an array is a JSON object, got {type(record).__name__}")
        dtype = np.dtype(_ARRAY_DTYPES[record["dtype"]]).newbyteorder("<")
        shape = record["shape"]
        if not isinstance(shape, list) or not all(type(k) is int and k >= 0 for k in shape):
            raise ValueError(f"shape {str(shape)[:40]} is not a list of sizes")
        shape = tuple(shape)
        if expected is not None and (record["dtype"], shape) != expected:
            raise ValueError(f"it declares {record['dtype']} {shape}, this run expects {expected[0]} {expected[1]}")
        size = dtype.itemsize * math.prod(shape)
        if "zlib_base64" in record:
            text = record["zlib_base64"]
            if len(text) > 4 * ((size + size // 16 + 64) // 3 + 1):  # zlib's worst case is a few bytes per 16 kB
                raise ValueError(f"{len(text)} characters of compressed data for {size} bytes")
            inflate = zlib.decompressobj()
            data = inflate.decompress(base64.b64decode(text, validate=True), size + 1)
        else:
            text = record["base64"]
            if len(text) > 4 * ((size + 2) // 3):
                raise ValueError(f"{len(text)} characters of base64 for {size} bytes")
            data = base64.b64decode(text, validate=True)
    except (KeyError, TypeError, ValueError, zlib.error) as err:
        raise ValueError(f"the checkpoint's early-learning array `{name}` is malformed: {err!r}") from err
    if len(data) != size:
        raise ValueError(f"the checkpoint's early-learning array `{name}` has {len(data)} bytes, not "
                         f"{size} for shape {shape}")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _planned_epochs(state) -> int:
    """The most epochs this run trains (``TrainerState.num_train_epochs``, set before ``on_train_begin``), else the
    epochs the resumed state has begun."""
    planned = getattr(state, "num_train_epochs", None)
    if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 1:
        return planned
    return max(1, math.ceil(float(getattr(state, "epoch", 0) or 0)))


def _check_layout(trainer: Any, args: Any, data: Any) -> None:
    """One example per row of a map-style dataset, or a one-line error saying what to do."""
    try:
        len(data)
    except TypeError:
        raise ValueError("EarlyLearningCallback needs a map-style training dataset of known length (a "
                         f"datasets.Dataset: its per-example arrays are sized by it), not a {type(data).__name__}: "
                         "load the data without streaming=True, or train without the monitor") from None
    if getattr(args, "packing", False):
        raise ValueError("packing=True puts several examples in a row, and EarlyLearningCallback needs one example "
                         "per row: set packing=False (DeCE itself trains packed, without the monitor)")
    if getattr(args, "padding_free", False) or getattr(trainer, "padding_free", False):
        raise ValueError("padding_free=True flattens each batch into one row, and EarlyLearningCallback needs one "
                         "example per row: set padding_free=False (DeCE itself trains padding-free, without the "
                         "monitor)")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _all_reduce_fn() -> Callable[[torch.Tensor, str], torch.Tensor] | None:
    if not _distributed():
        return None
    ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}

    # NCCL reduces accelerator tensors only; state restored from a checkpoint starts on the host.
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else None

    def all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
        out = t.to(device, copy=True) if device is not None else t.clone()
        torch.distributed.all_reduce(out, op=ops[op])
        return out.to(t.device)

    return all_reduce
