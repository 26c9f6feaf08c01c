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
from ..outliers import FENCE
from ..trainer.example_ids import EXAMPLE_ID_COLUMN
from ..validation import check_example_ids, check_int, check_name, check_number
from .early_learning import EarlyLearningCallback
from .poison_filter import SCORE_KEY, decide

logger = logging.getLogger(__name__)

# The callback's entry in TrainerState.stateful_callbacks (each checkpoint's trainer_state.json); not the class name,
# which transformers' own restore_callback_states_from_checkpoint would try to rebuild the callback from.
STATE_KEY = "dece_trainer.ContinueWithCE"
STATE_VERSION = 1
OUTPUT_DIR = "dece_continue"  # in output_dir: the report the decision read and the decision
REPORT_FILE = "suspicious.jsonl"
DECISION_FILE = "decision.json"
# Logged once, at the switch.
SWITCH_STEP = "dece_continue_switch_step"
DROPPED = "dece_continue_dropped"
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
            CE's cost; nothing flagged leaves the whole run on DeCE. docs/continue.md compares the switch points.
        fence: the modified z-score above which a row is flagged (`outliers.FENCE`; lower flags more rows).
        score_key: the report field the decision reads (``score``: the monitor's ranking score, combined with the
            audit's when the monitor has one; at ``switch_epoch=0`` the audit's score).
    """

    def __init__(self, monitor: EarlyLearningCallback, switch_epoch: int = 1, fence: float = FENCE,
                 score_key: str = SCORE_KEY):
        if not isinstance(monitor, EarlyLearningCallback):
            raise TypeError(f"`monitor` must be the run's EarlyLearningCallback, got {type(monitor).__name__}")
        self.monitor = monitor
        self.switch_epoch = check_int(switch_epoch, "switch_epoch", minimum=0)
        if self.switch_epoch == 0 and not monitor.has_audit:
            raise ValueError("switch_epoch=0 decides before training on the data audit alone, and the monitor has "
                             "none: build it with EarlyLearningCallback(audit=...) (the audit's records, or 'auto')")
        self.fence = check_number(fence, "fence", low=0.0, low_open=True)
        self.score_key = check_name(score_key, "score_key")
        self.decision: dict[str, Any] | None = None  # the record of the decision, once taken (or restored)
        self._trainer = None
        self._note: str | None = None

    @property
    def dropped_ids(self) -> list[int]:
        """Example ids left out after the switch, ascending (empty before the decision or when nothing was flagged)."""
        return list(self.decision["dropped"]) if self.decision is not None else []

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
        self._trainer = trainer
        callbacks = trainer.callback_handler.callbacks
        if self.monitor not in callbacks:  # the monitor closes the epoch before this callback reads its report
            callbacks.insert(callbacks.index(self) if self in callbacks else len(callbacks), self.monitor)
        self.monitor.attach(trainer)
        if self not in callbacks:
            trainer.add_callback(self)

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
        epochs = math.ceil(float(args.num_train_epochs))
        if self.switch_epoch >= epochs:
            raise ValueError(f"switch_epoch={self.switch_epoch} leaves no epoch to train with CE in a run of "
                             f"num_train_epochs={args.num_train_epochs:g}: switch earlier or train longer")
        self.decision = None
        self._set_note(None)
        trainer.set_row_filter(None)
        trainer.set_loss_override(None)
        if state.global_step <= 0:
            if self.switch_epoch == 0:  # before the first step, on the audit the monitor aligned in its own begin
                self._switch(args, state)
            return
        record = (getattr(state, "stateful_callbacks", None) or {}).get(STATE_KEY)
        epoch = float(state.epoch or 0.0)
        if record is not None:  # resumed after the decision: reuse it, never decide again
            self._apply(self._read_record(record, state), args)
            logger.info("ContinueWithCE resumed at step %d with its decision of step %d (%d rows left out)",
                        state.global_step, self.decision["decision_step"], len(self.decision["dropped"]))
        elif abs(epoch - self.switch_epoch) < _EPS:
            # a checkpoint from the switch epoch's last step, saved before the epoch end: the resumed run starts the
            # next epoch, so the decision is taken now, on the report the monitor restored (and closed)
            self._switch(args, state)
        elif epoch > self.switch_epoch:
            raise ValueError(f"resuming at epoch {epoch:g} (step {state.global_step}), past switch_epoch="
                             f"{self.switch_epoch}, from a checkpoint without ContinueWithCE's decision (state key "
                             f"{STATE_KEY!r}): resume from a checkpoint of this run made with ContinueWithCE")

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.decision is None and float(state.epoch or 0.0) > self.switch_epoch - _EPS:
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
            raise RuntimeError(f"ContinueWithCE could not decide {_when(self.switch_epoch)} (rank 0): "
                               f"{payload['error']}")
        step = int(state.global_step)
        flagged = payload["flagged"]
        record = {"version": STATE_VERSION, "switch_epoch": self.switch_epoch, "decision_step": step,
                  "switched": bool(flagged), "switch_step": step if flagged else None,
                  "dropped": sorted(int(i) for i in flagged), "flagged_order": [int(i) for i in flagged],
                  "summary": payload["summary"], "report": f"{OUTPUT_DIR}/{REPORT_FILE}"}
        state.stateful_callbacks[STATE_KEY] = record
        self._apply(record, args)
        logs = {DROPPED: len(record["dropped"])}
        if record["switched"]:
            logs[SWITCH_STEP] = step
            logger.info("ContinueWithCE: step %d, %s: %d rows flagged; training on with plain cross-entropy on the "
                        "rest", step, _when(self.switch_epoch), len(record["dropped"]))
        else:
            logger.info("ContinueWithCE: the report flagged no row %s: training stays on DeCE",
                        _when(self.switch_epoch))
        self._trainer.log(logs)

    def _decide(self, args) -> dict[str, Any]:
        path = os.path.join(args.output_dir, OUTPUT_DIR, REPORT_FILE)
        if self.switch_epoch == 0:
            records = self.monitor.audit_records()
            write_jsonl(path, records)
        elif self.monitor.history is None or self.monitor.history.num_epochs == 0:
            raise ValueError("the early-learning monitor has no finished epoch to report on")
        else:
            records = self.monitor.write_report(path)
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
            trainer.set_loss_override(1.0, 0.0)
            fence = _fmt(record["summary"].get("fence"))
            if record["switch_epoch"] == 0:
                self._set_note(f"dece+continue: trained with plain cross-entropy (alpha 1, no label smoothing) from "
                               f"the first step, without the {len(dropped)} training rows the data audit flagged "
                               f"before training (fence {fence}); their example ids are in "
                               f"`{OUTPUT_DIR}/{DECISION_FILE}`.")
            else:
                self._set_note(f"dece+continue: trained with DeCE to the end of epoch {record['switch_epoch']} (step "
                               f"{record['switch_step']}), then with plain cross-entropy (alpha 1, no label "
                               f"smoothing) without the {len(dropped)} training rows the early-learning report "
                               f"flagged (fence {fence}); their example ids are in `{OUTPUT_DIR}/{DECISION_FILE}`.")
        elif record["switch_epoch"] == 0:
            self._set_note("dece+continue: the data audit flagged no training row before training, so training "
                           "stayed on DeCE.")
        else:
            self._set_note(f"dece+continue: the early-learning report flagged no training row at the end of epoch "
                           f"{record['switch_epoch']}, so training stayed on DeCE.")
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
            missing = [k for k in ("version", "switch_epoch", "decision_step", "switch_step", "dropped", "summary")
                       if k not in record]
            if missing:
                raise ValueError(f"it lacks {missing}")
            if record["version"] != STATE_VERSION:
                raise ValueError(f"it has version {record['version']!r}, this dece-trainer reads {STATE_VERSION}")
            if record["switch_epoch"] != self.switch_epoch:
                raise ValueError(f"it was taken {_when(record['switch_epoch'])}, and this run has "
                                 f"switch_epoch={self.switch_epoch}: resume with the same switch_epoch")
            check_int(record["decision_step"], "decision_step", minimum=0)
            check_int(record["switch_step"], "switch_step", minimum=0, allow_none=True)
            dropped = check_example_ids(record["dropped"], "dropped", "the saved decision").tolist()
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
