"""The names of the early-learning monitor's metrics that something else reads back, defined once.

`dece_trainer.callbacks.early_learning` logs them (and `callbacks.plots` draws them); the model card
(`trainer.model_card`) turns the last ones into eval results. They live here, in the trainer layer, because the
trainer may not import the callbacks. Plain strings: no imports.
"""

from __future__ import annotations

import re

# ---- probe sets: ``probe_<name>_<metric>``, logged at every evaluation -------------------------------------------

PROBE_PREFIX = "probe_"
NLL = "nll"  # mean per-token cross-entropy of the probe set's labels (nats)
BLEU = "bleu"  # corpus BLEU of the generations (sacrebleu, 0-100)
ASR = "asr"  # share of generations carrying the attack payload (with a ``payload_fn``)
PROBE_METRICS = (NLL, BLEU, ASR)

_PROBE_KEY = re.compile(rf"{PROBE_PREFIX}(.+)_({'|'.join(PROBE_METRICS)})")


def probe_key(probe: str, metric: str) -> str:
    """The log key of ``metric`` (`NLL`, `BLEU` or `ASR`) on the probe set ``probe``: ``probe_<probe>_<metric>``."""
    return f"{PROBE_PREFIX}{probe}_{metric}"


def parse_probe_key(key: str) -> tuple[str, str] | None:
    """``(probe, metric)`` of a key `probe_key` wrote; None for any other key."""
    match = _PROBE_KEY.fullmatch(key)
    return None if match is None else (match.group(1), match.group(2))


# ---- the suspicious-example ranking against the ground truth, logged at every epoch end ---------------------------
# Two scores, two pairs of keys (docs/early_learning.md). The *ranking* score is what suspicious.jsonl is sorted by:
# the token recurrence score where the loss pass hands over target token ids (the DeCE trainers), else the
# per-example score (``example_score``: ``mean_worst_nll + late_drop``, what earlier versions ranked by). The
# ``suspicious_example_*`` keys always score ``example_score``: equal to the ranking's keys in runs without token
# ids, the older score beside the newer on the same run in the others.

SUSPICIOUS_AUROC = "suspicious_auroc"  # AUROC of the ranking score; the model card's "suspicious-example AUROC"
SUSPICIOUS_PRECISION_AT_K = "suspicious_precision_at_k"  # precision@k of the ranking score
SUSPICIOUS_EXAMPLE_AUROC = "suspicious_example_auroc"  # AUROC of the per-example score
SUSPICIOUS_EXAMPLE_PRECISION_AT_K = "suspicious_example_precision_at_k"  # precision@k of that score

# With the data audit (``EarlyLearningCallback(audit=...)``) the ranking score is the combined one (the monitor's
# score and the audit's, `outliers.combine_scores`), and each signal's own ranking is logged beside it: ``token``
# is the monitor's ranking score without the audit (the token score, else ``example_score``), ``audit`` the audit's.
SUSPICIOUS_TOKEN_AUROC = "suspicious_token_auroc"  # AUROC of the monitor's own score (with an audit only)
SUSPICIOUS_TOKEN_PRECISION_AT_K = "suspicious_token_precision_at_k"  # precision@k of that score
SUSPICIOUS_AUDIT_AUROC = "suspicious_audit_auroc"  # AUROC of the data audit's score (with an audit only)
SUSPICIOUS_AUDIT_PRECISION_AT_K = "suspicious_audit_precision_at_k"  # precision@k of that score
