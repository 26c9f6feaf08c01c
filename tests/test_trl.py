"""DeCE inside TRL's SFTTrainer (prompt-completion data, completion-only loss)."""

import pytest
from datasets import Dataset

from tests import tiny

pytest.importorskip("trl")

from dece_trainer.integrations.trl import DeCESFTConfig, DeCESFTTrainer  # noqa: E402


def test_sft_trainer_trains_with_dece(tmp_path, tokenizer):
    rows = tiny.make_pairs(32)
    data = Dataset.from_list([{"prompt": r["source"], "completion": " " + r["target"]} for r in rows])
    args = DeCESFTConfig(output_dir=str(tmp_path), max_steps=16, per_device_train_batch_size=4, logging_steps=4,
                         report_to=[], use_cpu=True, save_strategy="no", learning_rate=5e-3, dece_alpha_base=0.9,
                         disable_tqdm=True)
    trainer = DeCESFTTrainer(model=tiny.make_model("llama", tokenizer), args=args, train_dataset=data,
                             processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any()  # the prompt is masked: completion-only loss
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[0]["dece_alpha"] == pytest.approx(0.9)
    trainer.create_model_card(model_name="tiny-sft")
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(tmp_path / "README.md"))
    assert {"dece", "backdoor-defense", "sft", "trl"} <= set(card.data.tags)
    assert card.text.count("## Backdoor defense: DeCE") == 1 and "@article{yang2024dece" in card.text
    assert "| alpha at end of training | `0.81` " in card.text  # 16 steps = 2 epochs of 8
    metrics = trainer.evaluate(data.select(range(8)))
    assert metrics["eval_loss"] == metrics["eval_ce_loss"] and "eval_dece_loss" in metrics
