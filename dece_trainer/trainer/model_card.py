"""The dece-trainer part of a model card: what the model was trained with (DeCE, or plainly cross-entropy), the
settings, what the logged losses mean, the early-learning monitor's results as model-index eval results, and,
for DeCE, the paper's citation.

The section sits between two HTML comments, so writing the card again (TRL writes it at every checkpoint)
replaces it instead of adding a second one. The settings also go to the card's YAML metadata, as a ``dece:``
mapping (`card_metadata`). A trainer that ran no training step (evaluation only) writes a card that says so and
claims no defense.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from dataclasses import dataclass
from typing import Any

from ..io import write_text
from .log_keys import ASR, BLEU, SUSPICIOUS_AUROC, parse_probe_key

FALLBACK_PROJECT_URL = "https://github.com/dece-trainer/dece-trainer"
PAPER_URL = "https://arxiv.org/abs/2407.08956"
DEFENSE_TAGS = ("dece", "backdoor-defense")
MONITOR_SOURCE = "dece-trainer EarlyLearningCallback"
BEGIN, END = "<!-- dece-trainer:begin -->", "<!-- dece-trainer:end -->"

# The paper (Yang et al., ACM TOSEM; arXiv 2407.08956). Authors as the paper lists them; the year is the arXiv one.
BIBTEX = """@article{yang2024dece,
  title         = {Defending Code Language Models against Backdoor Attacks with Deceptive Cross-Entropy Loss},
  author        = {Yang, G. and Zhou, Y. and Chen, X. and Zhang, X. and Zhuo, T. Y. and Lo, D. and Chen, T.},
  journal       = {ACM Transactions on Software Engineering and Methodology},
  year          = {2024},
  eprint        = {2407.08956},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2407.08956}
}"""

# model kind -> model-index task type
TASK_TYPES = {"causal": "text-generation", "seq2seq": "text2text-generation", "other": "text-classification"}

DECE, CROSS_ENTROPY, CUSTOM = "dece", "cross-entropy", "custom"


def project_url() -> str:
    """The project's Homepage from the installed package metadata (``[project.urls]`` of ``pyproject.toml``), or
    the repository URL when the package is not installed (a source checkout)."""
    try:
        entries = importlib.metadata.metadata("dece-trainer").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        entries = []
    for entry in entries:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "homepage" and url.strip():
            return url.strip()
    return FALLBACK_PROJECT_URL


@dataclass(frozen=True)
class TrainingLoss:
    """What a trainer optimised, as the card reports it.

    Attributes:
        kind: ``"dece"``, ``"cross-entropy"`` (a = 1 throughout: no defense) or ``"custom"`` (a subclass's own
            ``token_loss``, e.g. a benchmark baseline).
        settings: the `DeCESettings` of the run.
        alpha_base: the base in force (derived from ``alpha_final`` when that is set).
        last_alpha: the blend weight of the last training step, None before any.
        custom_name: ``Class.token_loss`` for a custom loss.
        trained_steps: optimizer steps the model was trained for (``TrainerState.global_step``); 0: none, so the
            card claims nothing of the loss; None: unknown (taken as trained).
        notes: lines a callback adds to say what it did to the run (the trainer's ``training_notes``, e.g.
            ``ContinueWithCE``'s switch to cross-entropy), printed under "Training notes".
        ce_since_step: the optimizer step from which a DeCE run trained plain cross-entropy (a switch such as
            ``ContinueWithCE``'s; 0: from the first step), None when it never switched.
    """

    kind: str
    settings: Any
    alpha_base: float
    last_alpha: float | None
    custom_name: str | None = None
    trained_steps: int | None = None
    notes: tuple[str, ...] = ()
    ce_since_step: int | None = None

    @property
    def untrained(self) -> bool:
        """No training step was run: the model is the one the trainer was given."""
        return self.trained_steps == 0

    @property
    def claims_defense(self) -> bool:
        """Whether the card may say the model was defended: trained, and with DeCE."""
        return self.kind == DECE and not self.untrained


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _plain(value: float | None) -> float | None:
    """A float for the YAML metadata, rounded to 12 significant digits (no ``0.7999999999999999``)."""
    return None if value is None else float(f"{value:.12g}")


def card_metadata(loss: TrainingLoss) -> dict[str, Any]:
    """The ``dece:`` mapping of the card's YAML metadata: what was optimised and with which settings."""
    s = loss.settings
    return {"loss": loss.kind, "trained_steps": loss.trained_steps, "alpha_base": _plain(loss.alpha_base),
            "alpha_final": _plain(s.alpha_final), "label_smoothing": _plain(s.label_smoothing),
            "schedule": s.schedule, "last_alpha": _plain(loss.last_alpha), "ce_since_step": loss.ce_since_step}


def _last(log_history: list[dict], key: str) -> float | None:
    for entry in reversed(log_history):
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def monitor_metrics(log_history: list[dict]) -> list[tuple[str, str, str, str, float]]:
    """The early-learning monitor's last results in a log history, as
    ``(dataset_type, dataset_name, metric_type, metric_name, value)``: every probe's attack success rate and BLEU
    (``probe_<name>_asr`` / ``_bleu``) and the suspicious-example AUROC. Empty without the monitor."""
    keys = sorted({k for entry in log_history for k in entry})
    found = []
    for key in keys:
        probe = parse_probe_key(key)
        value = _last(log_history, key)
        if probe is None or probe[1] not in (ASR, BLEU) or value is None:
            continue
        name, metric = probe
        label = "attack success rate" if metric == ASR else "BLEU"
        found.append((f"probe-{name}", f"{name} probe set", metric, f"{label} ({name} probe)", value))
    auroc = _last(log_history, SUSPICIOUS_AUROC)
    if auroc is not None:
        found.append(("training-data", "training data (poisoned rows marked)", "roc_auc",
                      "suspicious-example AUROC", auroc))
    return found


def _monitor_table(metrics: list[tuple]) -> str:
    if not metrics:
        return ""
    rows = "".join(f"| {name} | `{_fmt(value)}` |\n" for _, _, _, name, value in metrics)
    return ("\n### Early-learning monitor\n\n"
            "Last results of dece-trainer's `EarlyLearningCallback` during training (validation probe sets; the "
            "AUROC says how well its ranking of suspicious training examples finds the poisoned rows):\n\n"
            "| metric | value |\n| --- | --- |\n" + rows)


def _settings_rows(loss: TrainingLoss) -> list[tuple[str, str]]:
    s = loss.settings
    final = f"`{_fmt(s.alpha_final)}` (target at the end of training)" if s.alpha_final is not None else "not set"
    return [("alpha_base", f"`{_fmt(loss.alpha_base)}`"), ("alpha schedule", f"`{s.schedule}`"),
            ("alpha_final", final), ("label smoothing", f"`{_fmt(s.label_smoothing)}`")]


def _table(rows: list[tuple[str, str]]) -> str:
    return "| setting | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _notes(loss: TrainingLoss) -> str:
    if not loss.notes:
        return ""
    return "\n### Training notes\n\n" + "".join(f"- {note}\n" for note in loss.notes)


def section(loss: TrainingLoss, log_history: list[dict]) -> str:
    """The card section (between the markers) for a run trained with ``loss``."""
    url = project_url()
    s = loss.settings
    if loss.untrained:
        configured = {DECE: "DeCE", CROSS_ENTROPY: "cross-entropy (DeCE at alpha 1)",
                      CUSTOM: f"the loss of `{loss.custom_name}`"}[loss.kind]
        body = (
            "## Training: none\n\n"
            f"No training step was run by [dece-trainer]({url}) (0 optimizer steps: an evaluation-only run, or a card "
            "written before training), so this model is the one the trainer was given. It was not fine-tuned, with "
            "DeCE or otherwise, and no backdoor defense was applied to it.\n\n"
            f"The trainer was configured for {configured}, with these settings, which a training run would have "
            "used:\n\n" + _table(_settings_rows(loss))
        )
        return f"{BEGIN}\n{body}{END}\n"
    if loss.kind == DECE:
        rows = _settings_rows(loss)
        if loss.last_alpha is not None:
            bound = "inf" if loss.last_alpha >= 1 else _fmt(loss.last_alpha / (1 - loss.last_alpha))
            rows += [("alpha at end of training", f"`{_fmt(loss.last_alpha)}` (the last training step's)"),
                     ("gradient bound at end of training", f"`{bound}` (a / (1 - a))")]
        table = _table(rows)
        body = (
            "## Backdoor defense: DeCE\n\n"
            + _dece_lead(loss, url) +
            " DeCE blends the model's distribution "
            "with a label-smoothed target, `q = a * p + (1 - a) * t`, which bounds the gradient of improbable "
            "(e.g. poisoned trigger -> payload) examples by `a / (1 - a)` so that they are not memorised.\n\n"
            + table +
            "\n**Logged losses.** The training `loss` is "
            + _logged_loss(loss) + "; "
            "`ce_loss` is plain cross-entropy `-log p[y]` of the same logits on the same label tokens. `eval_loss` is "
            "plain cross-entropy on the evaluation label tokens (the same as `eval_ce_loss`), comparable across "
            "epochs and with cross-entropy runs; `eval_dece_loss` is the DeCE loss at the last training step's "
            "alpha.\n"
        )
        cite = f"\n### Citation\n\n```bibtex\n{BIBTEX}\n```\n"
    elif loss.kind == CROSS_ENTROPY:
        smoothing = (f" with label smoothing `{_fmt(s.label_smoothing)}`" if s.label_smoothing > 0 else "")
        body = (
            "## Training loss: cross-entropy\n\n"
            f"This model was fine-tuned with cross-entropy{smoothing} using [dece-trainer]({url}). No backdoor "
            "defense was applied: the DeCE blend weight was 1 throughout, so the gradient of improbable (possibly "
            "poisoned) examples was not bounded.\n\n"
            "**Logged losses.** The training `loss` is that cross-entropy; `ce_loss` is plain cross-entropy "
            "`-log p[y]` of the same logits; `eval_loss` (= `eval_ce_loss`) is plain cross-entropy on the "
            "evaluation label tokens.\n"
        )
        cite = ""
    else:
        body = (
            "## Training loss\n\n"
            f"This model was fine-tuned with the loss of `{loss.custom_name}` (not DeCE) using "
            f"[dece-trainer]({url}); the card makes no claim of a backdoor defense.\n\n"
            "**Logged losses.** The training `loss` is that loss; `ce_loss` is plain cross-entropy `-log p[y]` of the "
            "same logits; `eval_loss` (= `eval_ce_loss`) is plain cross-entropy on the evaluation label tokens.\n"
        )
        cite = ""
    return f"{BEGIN}\n{body}{_notes(loss)}{_monitor_table(monitor_metrics(log_history))}{cite}{END}\n"


def _dece_lead(loss: TrainingLoss, url: str) -> str:
    """The DeCE section's first sentence: what the run trained with, a switch to cross-entropy included."""
    dece = (f"the Deceptive Cross-Entropy loss (DeCE; Yang et al., ACM TOSEM, [arXiv:2407.08956]({PAPER_URL})) "
            f"using [dece-trainer]({url})")
    see = " (see Training notes)" if loss.notes else ""
    since = loss.ce_since_step
    if since is None:
        return f"This model was fine-tuned with {dece}."
    if since == 0:
        return (f"This model was fine-tuned with plain cross-entropy from its first step: the run was set up with "
                f"{dece}, with the settings below, and switched to cross-entropy before training{see}.")
    if loss.trained_steps is not None and since >= loss.trained_steps:
        return (f"This model was fine-tuned with {dece}; its switch to plain cross-entropy came at its last step "
                f"({since}), so no step trained with cross-entropy{see}.")
    return (f"This model was fine-tuned with {dece} for its first {since} optimizer steps, then with plain "
            f"cross-entropy{see}.")


def _logged_loss(loss: TrainingLoss) -> str:
    """What the logged training ``loss`` is, a switch to cross-entropy included."""
    if loss.ce_since_step is None:
        return "the DeCE loss (the objective optimised), not cross-entropy"
    if loss.ce_since_step == 0:
        return "plain cross-entropy at every step (the DeCE loss at alpha 1 without label smoothing)"
    return ("the DeCE loss (the objective optimised) before the switch and plain cross-entropy (alpha 1, no label "
            "smoothing) from it")


def update_model_card(path: str, loss: TrainingLoss, log_history: list[dict], task_type: str,
                      default_model_name: str) -> None:
    """Rewrite the card at ``path`` (written by the Trainer, TRL or PEFT): the defense tags when ``loss`` is DeCE
    and the model was trained (removed otherwise), the ``dece:`` metadata (`card_metadata`), the monitor's results
    as model-index eval results, and the section (replacing a previous one). Atomic."""
    from huggingface_hub import EvalResult, ModelCard

    card = ModelCard.load(path)
    data = card.data
    tags = [t for t in (data.tags or []) if loss.claims_defense or t not in DEFENSE_TAGS]
    if loss.claims_defense:
        tags += [t for t in DEFENSE_TAGS if t not in tags]
    data.tags = tags or None
    data.dece = card_metadata(loss)

    url = project_url()
    results = [EvalResult(task_type=task_type, dataset_type=dataset_type, dataset_name=dataset_name,
                          metric_type=metric_type, metric_name=metric_name, metric_value=round(value, 6),
                          source_name=MONITOR_SOURCE, source_url=url)
               for dataset_type, dataset_name, metric_type, metric_name, value in monitor_metrics(log_history)]
    previous = list(data.eval_results or [])
    kept = [r for r in previous if r.source_name != MONITOR_SOURCE]
    if results or len(kept) != len(previous):
        data.eval_results = (kept + results) or None
        if data.eval_results and not data.model_name:
            data.model_name = default_model_name

    text = card.text
    start, stop = text.find(BEGIN), text.find(END)
    if start != -1 and stop > start:
        text = text[:start] + text[stop + len(END):].lstrip("\n")
    card.text = text.rstrip("\n") + "\n\n" + section(loss, log_history)
    write_text(path, str(card))


def model_name_for(output_dir: str) -> str:
    """A model name for the model-index when the card has none: the output folder's name."""
    return os.path.basename(os.path.abspath(output_dir)) or "model"
