"""DeCE settings: the ``--dece_*`` training arguments and their validated, resolved form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from ..ops.schedule import alpha_base_for_final
from ..validation import (
    SCHEDULES,
    check_alpha,
    check_alpha_pair,
    check_choice,
    check_label_smoothing,
)
from .alignment import AUTO, MODEL_KINDS

# With neither alpha_base nor alpha_final given, the schedule ends training at alpha 0.5 whatever the run length:
# the setting that stopped every measured dead-code and BadPre backdoor (docs/benchmark.md, "Defaults").
DEFAULT_ALPHA_FINAL = 0.5
# More epochs than any run trains: the run length is unknown (transformers uses sys.maxsize for a stream).
UNKNOWN_RUN_LENGTH = 1e9


@dataclass(frozen=True)
class Knob:
    """One DeCE setting: its training argument (``flag``, also the ``--flag`` of ``HfArgumentParser``), default,
    ``--help`` text and allowed values."""

    flag: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    def argument_field(self) -> Any:
        """The training-argument dataclass field: default, help and choices."""
        metadata = {"help": self.help, **({"choices": list(self.choices)} if self.choices else {})}
        return field(default=self.default, metadata=metadata)


# The one home of the DeCE settings: `DeCESettings`' field -> its flag, default and meaning. `DeCESettings`,
# `DeCESettings.from_args`, the `--dece_*` fields of `DeCEArgumentsMixin` and `make_dece_loss_func` read it.
KNOBS: dict[str, Knob] = {
    "alpha_base": Knob(
        "dece_alpha_base", None,
        "DeCE blend weight of epoch 1, in (0, 1]; epoch E uses alpha_base ** E. Lower values defend harder (see "
        "docs/choosing_alpha.md). Unset (and no --dece_alpha_final): the schedule ends training at alpha "
        f"{DEFAULT_ALPHA_FINAL} whatever the run length."),
    "label_smoothing": Knob(
        "dece_label_smoothing", 0.05,
        "DeCE label smoothing in [0, 1): the gold token gets 1 - e, each other e / (V - 1)."),
    "schedule": Knob(
        "dece_alpha_schedule", "epoch",
        "Exponent of the schedule: 'epoch' (1-based epoch number, the paper's) or 'continuous' (1 + fractional "
        "epoch, for 1-2 epoch runs).", SCHEDULES),
    "alpha_final": Knob(
        "dece_alpha_final", None,
        "Blend weight wanted at the end of training, in (0, 1]; when set, alpha_base is derived from it and the run "
        "length (giving --dece_alpha_base too is an error). Default: "
        f"{DEFAULT_ALPHA_FINAL} when --dece_alpha_base is not given either."),
    "model_kind": Knob(
        "dece_model_kind", AUTO,
        "How logits line up with labels: 'auto' (from the model, as transformers decides), 'causal' (shifted by "
        "one), 'seq2seq' (encoder-decoder) or 'other' (classifiers).", (AUTO, *MODEL_KINDS)),
    "fused_linear": Knob(
        "dece_fused_linear", True,
        "Causal LMs: compute the loss from the last hidden states and the LM head in chunks, never building the "
        "(tokens x vocabulary) logits. Models whose head is not recognised fall back to the logits with a warning."),
}
FLAGS = {name: knob.flag for name, knob in KNOBS.items()}


@dataclass(frozen=True)
class DeCESettings:
    """The DeCE knobs, validated. Built from any ``TrainingArguments`` by `from_args`.

    One field per entry of `KNOBS`, with its default; each means what the help of its training argument says
    (the ``--dece_*`` fields of `DeCETrainingArguments`): ``alpha_base`` (``dece_alpha_base``; giving it with
    ``alpha_final`` is an error), ``label_smoothing``, ``schedule`` (``dece_alpha_schedule``, see
    `dece_trainer.schedule_exponent`), ``alpha_final`` (with neither alpha given, ``DEFAULT_ALPHA_FINAL``: the
    schedule adapts to the run length), ``model_kind`` and ``fused_linear``.
    """

    alpha_base: float | None = KNOBS["alpha_base"].default
    label_smoothing: float = KNOBS["label_smoothing"].default
    schedule: str = KNOBS["schedule"].default
    alpha_final: float | None = KNOBS["alpha_final"].default
    model_kind: str = KNOBS["model_kind"].default
    fused_linear: bool = KNOBS["fused_linear"].default

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: store the checked, plain-Python values
        if self.alpha_base is None and self.alpha_final is None:
            set_(self, "alpha_final", DEFAULT_ALPHA_FINAL)
        if self.alpha_base is not None:
            set_(self, "alpha_base", check_alpha(self.alpha_base, FLAGS["alpha_base"]))
        set_(self, "label_smoothing", check_label_smoothing(self.label_smoothing, FLAGS["label_smoothing"]))
        check_choice(self.schedule, KNOBS["schedule"].choices, FLAGS["schedule"])
        if self.alpha_final is not None:
            set_(self, "alpha_final", check_alpha(self.alpha_final, FLAGS["alpha_final"]))
        check_alpha_pair(self.alpha_base, self.alpha_final, (FLAGS["alpha_base"], FLAGS["alpha_final"]))
        check_choice(self.model_kind, KNOBS["model_kind"].choices, FLAGS["model_kind"])
        if not isinstance(self.fused_linear, bool):
            raise ValueError(f"`{FLAGS['fused_linear']}` must be True or False, got {self.fused_linear!r}.")

    @classmethod
    def from_args(cls, args: Any) -> "DeCESettings":
        """Read ``dece_*`` fields from ``args`` (defaults where absent, e.g. plain ``TrainingArguments``)."""
        settings = cls(**{name: getattr(args, knob.flag, knob.default) for name, knob in KNOBS.items()})
        if getattr(args, "label_smoothing_factor", 0.0) > 0:
            raise ValueError(
                f"`label_smoothing_factor={args.label_smoothing_factor}` cannot be combined with DeCE, which "
                "smooths the labels itself: set `label_smoothing_factor=0` and use `dece_label_smoothing`."
            )
        return settings

    @property
    def is_cross_entropy(self) -> bool:
        """True when the blend weight is 1 at every step (``alpha_base = 1`` without ``alpha_final``, or
        ``alpha_final = 1``): the loss is then plain cross-entropy (label-smoothed when ``label_smoothing > 0``),
        whose gradient DeCE does not bound, so no backdoor defense is applied."""
        return self.alpha_final == 1.0 if self.alpha_final is not None else self.alpha_base == 1.0

    def resolved_alpha_base(self, num_train_epochs: float) -> float:
        """``alpha_base``, or the base that reaches ``alpha_final`` after ``num_train_epochs``. A run of unknown
        length (transformers' ``num_train_epochs = sys.maxsize`` for an ``IterableDataset`` with ``max_steps``)
        has no end point to aim at: that is an error, not a schedule that would stay at alpha 1 (plain CE)."""
        if self.alpha_final is None:
            return self.alpha_base
        if not math.isfinite(num_train_epochs) or num_train_epochs >= UNKNOWN_RUN_LENGTH:
            raise ValueError(f"`dece_alpha_final={self.alpha_final}` (the default when no alpha is given) needs "
                             "the run length, and this run's is unknown (a streaming dataset with max_steps?): "
                             "set `dece_alpha_base` instead, e.g. 0.9, which lowers alpha each epoch.")
        return alpha_base_for_final(self.alpha_final, num_train_epochs, self.schedule)


@dataclass
class DeCEArgumentsMixin:
    """The ``--dece_*`` fields shared by `DeCETrainingArguments` and its Seq2Seq sibling (and TRL's
    `DeCESFTConfig`): one per entry of `KNOBS`, named by its ``flag``."""

    dece_alpha_base: float | None = KNOBS["alpha_base"].argument_field()
    dece_label_smoothing: float = KNOBS["label_smoothing"].argument_field()
    dece_alpha_schedule: str = KNOBS["schedule"].argument_field()
    dece_alpha_final: float | None = KNOBS["alpha_final"].argument_field()
    dece_model_kind: str = KNOBS["model_kind"].argument_field()
    dece_fused_linear: bool = KNOBS["fused_linear"].argument_field()

    def __post_init__(self):
        super().__post_init__()
        DeCESettings.from_args(self)  # validate early, with the flag's name in the message


@dataclass
class DeCETrainingArguments(DeCEArgumentsMixin, TrainingArguments):
    """``TrainingArguments`` plus the ``--dece_*`` flags; ``HfArgumentParser`` picks them up."""


@dataclass
class DeCESeq2SeqTrainingArguments(DeCEArgumentsMixin, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus the ``--dece_*`` flags."""
