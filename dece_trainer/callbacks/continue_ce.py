"""``ContinueWithCE``: the defense in one run (``dece+continue``).

Train with DeCE while an `EarlyLearningCallback` gathers its evidence; at the end of epoch ``switch_epoch``, flag
the rows of the monitor's report (`poison_filter.decide`, the report's own outlier fence) and finish the same run
with plain cross-entropy on the other rows. The optimizer and the LR schedule carry on; only the objective and the
rows change (the trainer's generic hooks `DeCEMixin.set_row_filter` and `DeCEMixin.set_loss_override`). It is
``dece+filter`` without the second run: the rows the report flags never get a CE gradient, and the clean rows get
the CE epochs the DeCE run would have spent at a bounded gradient.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..io import write_json, write_jsonl
from ..outliers import AUDIT_CONFIDENCE, FENCE, top_z
from ..trainer.example_ids import EXAMPLE_ID_COLUMN
from ..validation import check_example_ids, check_int, check_name, check_number
from .early_learning import EarlyLearningCallback
from .poison_filter import SCORE_KEY, decide

logger = logging.getLogger(__name__)

# The callback's entry in TrainerState.stateful_callbacks (each checkpoint's trainer_state.json); not the class name,
# which transformers' own restore_callback_states_from_checkpoint would try to rebuild the callback from.
STATE_KEY = "dece_trainer.ContinueWithCE"
STATE_VERSION = 2  # 2: the guard's fields (``guard``, ``decision_epoch``) and the pending deferral
READABLE_VERSIONS = (1, 2)
OUTPUT_DIR = "dece_continue"  # in output_dir: the report the decision read and the decision
REPORT_FILE = "suspicious.jsonl"
DECISION_FILE = "decision.json"
# Logged once, at the switch.
SWITCH_STEP = "dece_continue_switch_step"
DROPPED = "dece_continue_dropped"
AUDIT_TOP_Z = "dece_continue_audit_top_z"  # logged by a guarded switch before training
FALLBACK_EPOCH = 1  # where a switch before training that the guard defers decides, on the combined report
_EPS = 1e-6


class ContinueWithCE(TrainerCallback):
    """DeCE until the end of epoch ``switch_epoch``, then plain cross-entropy without the rows the early-learning
    report flags, in the same run.

    At the end of epoch ``switch_epoch`` (after ``monitor`` has closed the epoch), rank 0 writes the monitor's report
    to ``output_dir/dece_continue/suspicious.jsonl`` (`EarlyLearningCallback.write_report`) and decides on it
    (`poison_filter.decide` at ``fence``); the flagged example ids are broadcast to every process
    (``torch.distributed`` when initialised). When rows are flagged, every following step leaves them out, from the
    loss and from its normaliser ``num_items_in_batch`` (`DeCEMixin.set_row_filter`), and trains with alpha 1 and no
    label smoothing (`DeCEMixin.set_loss_override`): plain CE on the rest. The optimizer, its state and the LR
    schedule carry on unchanged. Nothing flagged: training stays on DeCE.

    The DeCE schedule is not re-based at the switch: the blend weight of the DeCE epochs is the one the settings give
    for the whole run (``dece_alpha_final`` is where the schedule reaches at the run's end, as without this callback),
    so a run whose report flags nothing trains exactly as plain DeCE, and a run that switches used the first
    ``switch_epoch`` epochs of that schedule.

    A switch before training (``switch_epoch=0``) is guarded. The audit sees only what the texts show: where the
    task's own associations outscore a planted one (Lyra at its released 1-5% doses) it flags clean rows and keeps
    the poison, which plain CE would then learn. So the audit decides at step 0 only when its most suspicious row is
    a clear outlier, a robust z-score (`outliers.robust_z`) of at least ``audit_confidence``. Otherwise the run stays
    on DeCE and decides at the end of epoch 1 on the monitor's combined report, as ``switch_epoch=1`` does (so a
    guarded run needs ``num_train_epochs`` above 1). The audit's top z-score is logged
    (``dece_continue_audit_top_z``) and a deferral is recorded in ``decision.json``, the checkpoint and the card.

    The switch is logged (``dece_continue_switch_step``, ``dece_continue_dropped``; ``dece_continue_dropped = 0``
    alone when nothing was flagged), written to ``output_dir/dece_continue/decision.json`` (atomically) and noted in
    the model card (the trainer's ``training_notes``). Checkpoints carry the decision
    (``TrainerState.stateful_callbacks["dece_trainer.ContinueWithCE"]``): a run resumed after the switch reuses it and
    never decides again; one resumed from the switch epoch's last step, saved before the epoch was closed, decides
    when it resumes, on the report the monitor restored.

    Needs a DeCE trainer (the hooks), ``monitor`` before it in the callbacks (it is put there when missing), a
    map-style training dataset with ``example_id`` and a run measured in epochs: ``max_steps`` runs and streaming
    (``IterableDataset``) data are refused when the callback is attached and again when training begins.

    Args:
        monitor: the run's `EarlyLearningCallback`, whose report the decision reads.
        switch_epoch: the epoch at whose end the run switches to CE (1: after the first epoch). 0 decides before
            the first step on the data audit alone (the monitor's ``audit``; its rows written to
            ``dece_continue/suspicious.jsonl``): no DeCE epoch, plain CE on the rows the audit does not flag, at
            CE's cost, when the audit is confident (``audit_confidence``). Default (None): 0 when ``monitor``
            holds the data audit, else 1; docs/continue.md compares the switch points.
        fence: the modified z-score above which a row is flagged (`outliers.FENCE`; lower flags more rows).
        score_key: the report field the decision reads (``score``: the monitor's ranking score, combined with the
            audit's when the monitor has one; at ``switch_epoch=0`` the audit's score).
        audit_confidence: with ``switch_epoch=0``, the robust z-score (of ``score_key`` over the audit's rows) that
            the most suspicious row must reach for the audit to decide before training (`AUDIT_CONFIDENCE`, 5.0);
            below it the decision waits for the end of epoch 1. None trusts the audit whatever its margin (nothing
            flagged then leaves the whole run on DeCE). Unused when ``switch_epoch`` is above 0.
    """

    def __init__(self, monitor: EarlyLearningCallback, switch_epoch: int | None = None, fence: float = FENCE,
                 score_key: str = SCORE_KEY, audit_confidence: float | None = AUDIT_CONFIDENCE):
        if not isinstance(monitor, EarlyLearningCallback):
            raise TypeError(f"`monitor` must be the run's EarlyLearningCallback, got {type(monitor).__name__}")
        self.monitor = monitor
        if switch_epoch is None:
            switch_epoch = 0 if monitor.has_audit else 1
        self.switch_epoch = check_int(switch_epoch, "switch_epoch", minimum=0)
        if self.switch_epoch == 0 and not monitor.has_audit:
            raise ValueError("switch_epoch=0 decides before training on the data audit alone, and the monitor has "
                             "none: build it with EarlyLearningCallback(audit=...) (the audit's records, or 'auto')")
        self.fence = check_number(fence, "fence", low=0.0, low_open=True)
        self.score_key = check_name(score_key, "score_key")
        self.audit_confidence = (None if audit_confidence is None
                                 else check_number(audit_confidence, "audit_confidence", low=0.0))
        self.guard: dict[str, Any] | None = None  # the guard's reading of the audit (switch_epoch=0), once taken
        self.decision: dict[str, Any] | None = None  # the record of the decision, once taken (or restored)
        self._trainer = None
        self._note: str | None = None

    @property
    def dropped_ids(self) -> list[int]:
        """Example ids left out after the switch, ascending (empty before the decision or when nothing was flagged)."""
        return list(self.decision["dropped"]) if self.decision is not None else []

    @property
    def decision_epoch(self) -> int:
        """The epoch at whose end the decision is taken: ``switch_epoch``, or 1 where the guard deferred a switch
        before training."""
        return FALLBACK_EPOCH if self.guard is not None and self.guard["deferred"] else self.switch_epoch

    @property
    def switch_step(self) -> int | None:
        """The global step after which training went on with CE; None before the switch or without one."""
        return self.decision["switch_step"] if self.decision is not None else None

    # ---- wiring -----------------------------------------------------------------------------------

    def attach(self, trainer: Any) -> None:
        """Connect to a DeCE ``trainer`` (called by it when the callback is passed in ``callbacks`` or added), with
        ``monitor`` attached and placed before this callback. Idempotent."""
        if self._trainer is trainer:
            return
        missing = [name for name in ("set_row_filter", "set_loss_override", "training_notes")
                   if not hasattr(trainer, name)]
        if missing:
            raise TypeError(f"ContinueWithCE needs a DeCE trainer (DeCETrainer, DeCESeq2SeqTrainer, DeCESFTTrainer): "
                            f"{type(trainer).__name__} has no {', '.join(missing)}")
        _refuse_unsupported(trainer.train_dataset, trainer.args, self.switch_epoch)
        self._check_epochs(trainer.args)
        self._trainer = trainer
        callbacks = trainer.callback_handler.callbacks
        if self.monitor not in callbacks:  # the monitor closes the epoch before this callback reads its report
            callbacks.insert(callbacks.index(self) if self in callbacks else len(callbacks), self.monitor)
        self.monitor.attach(trainer)
        if self not in callbacks:
            trainer.add_callback(self)

    def _check_epochs(self, args: Any) -> None:
        """An epoch of CE after the switch (after epoch 1 too when the guard may defer), or a one-line error
        naming the settings; checked when the callback attaches and again when training begins."""
        epochs = math.ceil(float(args.num_train_epochs))
        if self.switch_epoch >= epochs:
            raise ValueError(f"switch_epoch={self.switch_epoch} leaves no epoch to train with CE in a run of "
                             f"num_train_epochs={args.num_train_epochs:g}: switch earlier or train longer")
        if self.switch_epoch == 0 and self.audit_confidence is not None and epochs <= FALLBACK_EPOCH:
            raise ValueError(f"switch_epoch=0 is guarded (audit_confidence={self.audit_confidence:g}): where the audit "
                             f"is not confident the run decides at the end of epoch {FALLBACK_EPOCH}, which leaves no "
                             f"epoch to train with CE in a run of num_train_epochs={args.num_train_epochs:g}: train "
                             f"longer, or set audit_confidence=None to let the audit decide whatever its margin")

    # ---- training events --------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._trainer
        if trainer is None:
            raise ValueError("ContinueWithCE is not attached: pass it in the DeCE trainer's `callbacks`")
        _refuse_unsupported(trainer.train_dataset, args, self.switch_epoch)
        callbacks = trainer.callback_handler.callbacks
        if self.monitor not in callbacks or callbacks.index(self.monitor) > callbacks.index(self):
            raise ValueError("ContinueWithCE reads its monitor's report once the monitor has closed the epoch: pass "
                             "callbacks=[monitor, ContinueWithCE(monitor)] (the monitor first)")
        self._check_epochs(args)
        self.decision = None
        self.guard = None
        self._set_note(None)
        trainer.set_row_filter(None)
        trainer.set_loss_override(None)
        if state.global_step <= 0:
            if self.switch_epoch == 0:  # before the first step, on the audit the monitor aligned in its own begin
                self._switch(args, state)
            return
        record = (getattr(state, "stateful_callbacks", None) or {}).get(STATE_KEY)
        epoch = float(state.epoch or 0.0)
        if record is not None:
            record = self._read_record(record, state)
            self.guard = record.get("guard")
            if record.get("pending"):  # resumed after a deferral, before the decision: wait for epoch 1 again
                if epoch > self.decision_epoch + _EPS:
                    raise ValueError(f"resuming at epoch {epoch:g} (step {state.global_step}) from a checkpoint "
                                     f"whose ContinueWithCE decision, due {_when(self.decision_epoch)}, is still "
                                     f"pending: the checkpoint is not from a run that trained through that decision")
                self._defer(record, args)
                record = None
        if record is not None:  # resumed after the decision: reuse it, never decide again
            self._apply(record, args)
            logger.info("ContinueWithCE resumed at step %d with its decision of step %d (%d rows left out)",
                        state.global_step, self.decision["decision_step"], len(self.decision["dropped"]))
        elif abs(epoch - self.decision_epoch) < _EPS:
            # a checkpoint from the switch epoch's last step, saved before the epoch end: the resumed run starts the
            # next epoch, so the decision is taken now, on the report the monitor restored (and closed)
            self._switch(args, state)
        elif epoch > self.decision_epoch:
            raise ValueError(f"resuming at epoch {epoch:g} (step {state.global_step}), past the decision "
                             f"{_when(self.decision_epoch)}, from a checkpoint without ContinueWithCE's decision "
                             f"(state key {STATE_KEY!r}): resume from a checkpoint of this run made with "
                             f"ContinueWithCE")

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = float(state.epoch or 0.0)
        if self.decision is None and epoch > self.decision_epoch - _EPS:
            self._switch(args, state)

    # ---- the decision -----------------------------------------------------------------------------

    def _switch(self, args, state) -> None:
        """Decide on rank 0, broadcast, apply, record (checkpoint state, JSON file, logs)."""
        payload, failure = None, None
        if _rank() == 0:
            try:
                payload = self._decide(args)
            except Exception as err:  # noqa: BLE001 - every process must hear of it, or the others would wait
                failure = err
                payload = {"error": f"{type(err).__name__}: {err}"}
        payload = _broadcast(payload)
        if failure is not None:
            raise failure
        if "error" in payload:
            raise RuntimeError(f"ContinueWithCE could not decide {_when(self.decision_epoch)} (rank 0): "
                               f"{payload['error']}")
        if payload.get("guard") is not None:
            self.guard = payload["guard"]
            self._trainer.log({AUDIT_TOP_Z: self.guard["audit_top_z"]})
        step = int(state.global_step)
        if self.guard is not None and self.guard["deferred"] and self.decision_epoch > float(state.epoch or 0.0):
            record = {"version": STATE_VERSION, "switch_epoch": self.switch_epoch, "pending": True,
                      "guard": self.guard, "report": f"{OUTPUT_DIR}/{REPORT_FILE}"}
            state.stateful_callbacks[STATE_KEY] = record
            self._defer(record, args)
            return
        flagged = payload["flagged"]
        record = {"version": STATE_VERSION, "switch_epoch": self.switch_epoch, "decision_step": step,
                  "decision_epoch": self.decision_epoch, "guard": self.guard,
                  "switched": bool(flagged), "switch_step": step if flagged else None,
                  "dropped": sorted(int(i) for i in flagged), "flagged_order": [int(i) for i in flagged],
                  "summary": payload["summary"], "report": f"{OUTPUT_DIR}/{REPORT_FILE}"}
        state.stateful_callbacks[STATE_KEY] = record
        self._apply(record, args)
        logs = {DROPPED: len(record["dropped"])}
        if record["switched"]:
            logs[SWITCH_STEP] = step
            logger.info("ContinueWithCE: step %d, %s: %d rows flagged; training on with plain cross-entropy on the "
                        "rest", step, _when(self.decision_epoch), len(record["dropped"]))
        else:
            logger.info("ContinueWithCE: the report flagged no row %s: training stays on DeCE",
                        _when(self.decision_epoch))
        self._trainer.log(logs)

    def _defer(self, record: dict[str, Any], args) -> None:
        """Put a guarded switch before training off to the end of epoch 1."""
        self.guard = record["guard"]
        if _rank() == 0:
            write_json(os.path.join(args.output_dir, OUTPUT_DIR, DECISION_FILE), record)
        later = f"so it trains with DeCE and decides {_when(FALLBACK_EPOCH)} on the early-learning report"
        self._set_note(f"dece+continue: {_guard_words(self.guard)}, {later}.")
        logger.info("ContinueWithCE: %s, %s", _guard_words(self.guard), later)

    def _decide(self, args) -> dict[str, Any]:
        path = os.path.join(args.output_dir, OUTPUT_DIR, REPORT_FILE)
        if self.decision_epoch == 0:
            records = self.monitor.audit_records()
            write_jsonl(path, records)
            if self.audit_confidence is not None:
                top = _top_z(records, self.score_key)
                guard = {"audit_top_z": round(top, 4), "audit_confidence": self.audit_confidence,
                         "deferred": not top >= self.audit_confidence}
                if guard["deferred"]:
                    return {"guard": guard}
                return {**self._flagged(records), "guard": guard}
        elif self.monitor.history is None or self.monitor.history.num_epochs == 0:
            raise ValueError("the early-learning monitor has no finished epoch to report on")
        else:
            records = self.monitor.write_report(path)
        return self._flagged(records)

    def _flagged(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        decision = decide(records, self.score_key, self.fence)
        summary = decision.summary(_poisoned_by_id(records, self.monitor.ground_truth_column))
        return {"flagged": [int(i) for i in decision.flagged], "summary": summary}

    def _apply(self, record: dict[str, Any], args) -> None:
        """Put a decision in force on the trainer and write its file (rank 0)."""
        trainer = self._trainer
        self.decision = record
        dropped = record["dropped"]
        if dropped:
            trainer.set_row_filter(dropped)
            trainer.set_loss_override(1.0, 0.0, since_step=record["switch_step"])
            fence = _fmt(record["summary"].get("fence"))
            if record.get("decision_epoch", record["switch_epoch"]) == 0:
                self._set_note(f"dece+continue: trained with plain cross-entropy (alpha 1, no label smoothing) from "
                               f"the first step, without the {len(dropped)} training rows the data audit flagged "
                               f"before training (fence {fence}); their example ids are in "
                               f"`{OUTPUT_DIR}/{DECISION_FILE}`.")
            else:
                self._set_note(f"dece+continue: {_deferred_words(record)}trained with DeCE to the end of epoch "
                               f"{record.get('decision_epoch', record['switch_epoch'])} (step "
                               f"{record['switch_step']}), then with plain cross-entropy (alpha 1, no label "
                               f"smoothing) without the {len(dropped)} training rows the early-learning report "
                               f"flagged (fence {fence}); their example ids are in `{OUTPUT_DIR}/{DECISION_FILE}`.")
        elif record.get("decision_epoch", record["switch_epoch"]) == 0:
            self._set_note("dece+continue: the data audit flagged no training row before training, so training "
                           "stayed on DeCE.")
        else:
            epoch = record.get("decision_epoch", record["switch_epoch"])
            waited = f"{_deferred_words(record)}waited for the end of epoch {epoch}; " if record.get("guard") else ""
            self._set_note(f"dece+continue: {waited}the early-learning report flagged no training row at the end of "
                           f"epoch {epoch}, so training stayed on DeCE.")
        if _rank() == 0:
            write_json(os.path.join(args.output_dir, OUTPUT_DIR, DECISION_FILE), record)

    def _set_note(self, note: str | None) -> None:
        notes = self._trainer.training_notes
        if self._note in notes:
            notes.remove(self._note)
        self._note = note
        if note is not None:
            notes.append(note)

    def _read_record(self, record: Any, state) -> dict[str, Any]:
        where = (f"ContinueWithCE's decision in the checkpoint at step {state.global_step} "
                 f"(trainer_state.json, stateful_callbacks[{STATE_KEY!r}])")
        try:
            if not isinstance(record, dict):
                raise ValueError(f"it is a {type(record).__name__}, not a JSON object")
            guard = record.get("guard")
            if guard is not None and not (isinstance(guard, dict) and isinstance(guard.get("deferred"), bool)
                                          and all(_is_number(guard.get(k))
                                                  for k in ("audit_top_z", "audit_confidence"))):
                raise ValueError("`guard` must be a JSON object with a boolean `deferred` and numbers "
                                 "`audit_top_z` and `audit_confidence`")
            needed = ("version", "switch_epoch", "guard") if record.get("pending") else (
                "version", "switch_epoch", "decision_step", "switch_step", "dropped", "summary")
            missing = [k for k in needed if k not in record]
            if missing:
                raise ValueError(f"it lacks {missing}")
            if record["version"] not in READABLE_VERSIONS:
                raise ValueError(f"it has version {record['version']!r}, this dece-trainer reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
            if record["switch_epoch"] != self.switch_epoch:
                raise ValueError(f"it was taken {_when(record['switch_epoch'])}, and this run has "
                                 f"switch_epoch={self.switch_epoch}: resume with the same switch_epoch")
            if guard is not None and guard["audit_confidence"] != self.audit_confidence:
                raise ValueError(f"it was taken with audit_confidence={guard['audit_confidence']:g}, and this run has "
                                 f"audit_confidence={self.audit_confidence}: resume with the same audit_confidence")
            if record.get("pending"):
                if guard is None or not guard["deferred"]:
                    raise ValueError("a pending decision must hold the guard's deferral")
                return record
            check_int(record["decision_step"], "decision_step", minimum=0)
            dropped = check_example_ids(record["dropped"], "dropped", "the saved decision").tolist()
            if dropped:
                check_int(record["switch_step"], "switch_step (a decision that drops rows switched)", minimum=0)
            elif record["switch_step"] is not None:
                raise ValueError(f"`switch_step` must be null where no row was dropped, got {record['switch_step']!r}")
            if not isinstance(record["summary"], dict):
                raise ValueError("`summary` must be a JSON object")
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        return {**record, "dropped": sorted(dropped)}


def _refuse_unsupported(data: Any, args: Any, switch_epoch: int) -> None:
    """A map-style training dataset and a run measured in epochs, or a one-line error saying what to do."""
    if data is not None and (isinstance(data, torch.utils.data.IterableDataset) or not hasattr(data, "__len__")):
        raise ValueError(f"ContinueWithCE switches {_when(switch_epoch)} and leaves rows out by example "
                         f"id, so it needs a map-style training dataset (a datasets.Dataset), not a streaming "
                         f"{type(data).__name__}: load the data without streaming=True")
    if getattr(args, "max_steps", -1) > 0:
        raise ValueError(f"ContinueWithCE switches {_when(switch_epoch)}, and this run is measured in "
                         f"steps (max_steps={args.max_steps}): set num_train_epochs and max_steps=-1")


def _poisoned_by_id(records: list[dict], column: str | None) -> np.ndarray | None:
    """The ground truth of the report's rows by example id (for the decision's counts); None without it."""
    if column is None or not records or column not in records[0]:
        return None
    ids = np.asarray([r[EXAMPLE_ID_COLUMN] for r in records], dtype=np.int64)
    poisoned = np.zeros(int(ids.max()) + 1, dtype=bool)
    poisoned[ids] = [bool(r[column]) for r in records]
    return poisoned


def _top_z(records: list[dict[str, Any]], key: str) -> float:
    """`outliers.top_z` of the report's ``key`` (0 for an empty report)."""
    if records and key not in records[0]:
        raise ValueError(f"the audit's records have no {key!r} field (they have {sorted(records[0])})")
    return top_z([r[key] for r in records])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _guard_words(guard: dict[str, Any]) -> str:
    return (f"the data audit's most suspicious row stood at robust z {guard['audit_top_z']:g}, below the "
            f"{guard['audit_confidence']:g} a switch before training needs")


def _deferred_words(record: dict[str, Any]) -> str:
    """``"<the guard's reading>, so the run "`` where the guard deferred the decision, else ``""``."""
    guard = record.get("guard")
    return f"{_guard_words(guard)}, so the run " if guard is not None and guard["deferred"] else ""


def _when(switch_epoch: Any) -> str:
    """``"at the end of epoch 2"``, or ``"before training"`` for 0."""
    return "before training" if switch_epoch == 0 else f"at the end of epoch {switch_epoch}"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _broadcast(payload: Any) -> Any:
    """Rank 0's ``payload`` on every process (itself when not distributed)."""
    if not _distributed():
        return payload
    box = [payload]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
