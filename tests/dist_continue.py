"""Train a tiny Llama with DeCE + ContinueWithCE and dump its final weights and decision; run under torchrun or alone.

Usage: python tests/dist_continue.py OUT_DIR PER_DEVICE_BATCH
       torchrun --nproc_per_node 2 tests/dist_continue.py OUT_DIR PER_DEVICE_BATCH
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from dece_trainer import ContinueWithCE, DeCETrainer, EarlyLearningCallback  # noqa: E402
from tests import test_continue_ce as setup  # noqa: E402
from tests import tiny  # noqa: E402


def main(out_dir: str, batch: int) -> None:
    tok = tiny.train_tokenizer()
    data = setup.make_data(tok)
    monitor = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False)
    callback = ContinueWithCE(monitor, fence=setup.FENCE, score_key=setup.SCORE_KEY)
    args = setup.sgd_args(pathlib.Path(out_dir).parent, pathlib.Path(out_dir).name, per_device_train_batch_size=batch)
    trainer = DeCETrainer(model=tiny.make_model("llama", tok), args=args, train_dataset=data,
                          data_collator=tiny.pad_collator(tok), callbacks=[monitor, callback])
    trainer.train()
    if trainer.is_world_process_zero():
        state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, os.path.join(out_dir, "weights.safetensors"))
        logs = [e for e in trainer.state.log_history if "loss" in e]
        with open(os.path.join(out_dir, "run.json"), "w") as f:
            json.dump({"dropped": callback.dropped_ids, "switch_step": callback.switch_step,
                       "row_filter": trainer.dece_row_filter, "loss": [e["loss"] for e in logs],
                       "dece_alpha": [e.get("dece_alpha") for e in logs]}, f)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
