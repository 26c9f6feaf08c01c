"""The experiment grid's vocabulary: the losses a cell can train with, and a cell's identity. Pure Python, so
the command line can list them without loading any model code."""

from __future__ import annotations

from dataclasses import asdict, dataclass

FILTER = "dece+filter"
FILTER_FIRST_STAGE = "dece"  # the subfolder of a dece+filter cell that trains its own DeCE first stage
CONTINUE = "dece+continue"
ONION = "onion"  # a test-time defense: trains as ce
LOSSES = ("ce", "dece", FILTER, "ls", "gce", "lowlr", ONION, CONTINUE)
LOSS_HELP = {"ce": "cross-entropy", "dece": "DeCE",
             FILTER: "DeCE, drop the rows its report flags, CE again on the rest (reuses a finished dece cell)",
             CONTINUE: "DeCE to the end of epoch --switch_epoch (0 with --audit, guarded: the data audit decides "
                       "before training where it is confident, else at the end of epoch 1; 1 without), then plain CE "
                       "without the rows the report flags then, in the same run (ContinueWithCE; needs --epochs "
                       "above --switch_epoch)",
             "ls": "label smoothing 0.1 alone", "gce": "generalized cross-entropy (q=0.7)",
             "lowlr": "CE at a tenth of the learning rate",
             ONION: "CE, then the ONION test-time defense: the words whose removal lowers the source's perplexity "
                    "under the cell's own fine-tuned model by more than a threshold (set to delete at most 2% of "
                    "the clean validation sources' words) are deleted from the clean and triggered test sources "
                    "before generating"}
ALPHA_LOSSES = ("dece", FILTER, CONTINUE)  # the losses a cell sweeps alpha for


@dataclass
class Cell:
    """One cell of the grid, (dataset, attack, poison rate, loss, alpha, seed), and the key that names its
    folder and its record."""

    dataset: str
    attack: str
    poison_rate: float
    loss: str
    seed: int
    alpha_base: float | None = None
    alpha_final: float | None = None  # set when the cell was asked by its final alpha (alpha_base derived)

    @property
    def key(self) -> str:
        alpha = ""
        if self.loss in ALPHA_LOSSES:
            alpha = f"-f{self.alpha_final:g}" if self.alpha_final is not None else f"-a{self.alpha_base:g}"
        return f"{self.dataset}-{self.attack}-p{self.poison_rate:g}-{self.loss}{alpha}-s{self.seed}"

    def record(self) -> dict:
        return asdict(self)
