"""Model cards of DeCE runs: tags, settings, what the losses are, the citation, the monitor's results as
model-index eval results; CE runs without defense claims; push_to_hub uploads the folder with that card."""

import functools
import importlib.metadata
import os
import pathlib

import pytest
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model

from dece_trainer import (
    DeCESeq2SeqTrainer,
    DeCESeq2SeqTrainingArguments,
    DeCETrainer,
    EarlyLearningCallback,
    add_example_ids,
)
from dece_trainer.trainer import model_card
from tests import tiny

HOMEPAGE = "https://github.com/dece-trainer/dece-trainer"


make_args = functools.partial(tiny.training_args, per_device_train_batch_size=8, num_train_epochs=1,
                              learning_rate=5e-3, logging_steps=2, dece_alpha_base=0.9)


def load(tmp_path):
    return ModelCard.load(str(tmp_path / "out" / "README.md"))


@pytest.fixture(scope="module")
def monitored_card(tokenizer, tmp_path_factory):
    """A DeCE run with the early-learning monitor (probes, ground truth), and its card written twice."""
    tmp_path = tmp_path_factory.mktemp("card")
    train = add_example_ids(tiny.causal_dataset(tokenizer, tiny.poison(tiny.make_pairs(24, seed=1), 0.1, seed=1)))
    clean = tiny.causal_dataset(tokenizer, tiny.make_pairs(4, seed=9))
    triggered = tiny.causal_dataset(tokenizer, tiny.poison(tiny.make_pairs(4, seed=9), 1.0, seed=2))
    monitor = EarlyLearningCallback(probes={"clean": clean, "triggered": triggered},
                                    payload_fn=lambda text: "1=1" in text, ground_truth_column="is_poisoned",
                                    max_generate=4, max_new_tokens=8, plots=False)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=make_args(tmp_path, eval_strategy="epoch"),
                          train_dataset=train, eval_dataset=clean, data_collator=tiny.pad_collator(tokenizer),
                          processing_class=tokenizer, callbacks=[monitor])
    trainer.train()
    trainer.create_model_card(model_name="tiny-dece", tags="my-tag")
    trainer.create_model_card(model_name="tiny-dece", tags=["my-tag"])  # rewriting does not duplicate anything
    return trainer, load(tmp_path)


def test_dece_card_has_tags_settings_loss_meaning_and_citation(monitored_card):
    trainer, card = monitored_card
    assert {"dece", "backdoor-defense", "my-tag"} <= set(card.data.tags)
    text = card.text
    assert text.count("## Backdoor defense: DeCE") == 1 and text.count("@article{yang2024dece") == 1
    for row in ("| alpha_base | `0.9` |", "| alpha schedule | `epoch` |", "| alpha_final | not set |",
                "| label smoothing | `0.05` |", "| alpha at end of training | `0.9` "):
        assert row in text, row
    assert "training `loss` is the DeCE loss" in text and "`ce_loss` is plain cross-entropy" in text
    assert "`eval_loss` is plain cross-entropy" in text
    assert "Defending Code Language Models against Backdoor Attacks with Deceptive Cross-Entropy Loss" in text
    assert "Zhuo, T. Y." in text and "2407.08956" in text and "ACM Transactions on Software Engineering" in text
    assert f"[dece-trainer]({HOMEPAGE})" in text


def test_monitor_results_are_model_index_eval_results(monitored_card):
    trainer, card = monitored_card
    results = {(r.dataset_type, r.metric_type): r for r in card.data.eval_results}
    history = trainer.state.log_history
    last = lambda key: [e[key] for e in history if key in e][-1]  # noqa: E731
    assert results[("probe-triggered", "asr")].metric_value == pytest.approx(last("probe_triggered_asr"))
    assert results[("probe-clean", "bleu")].metric_value == pytest.approx(last("probe_clean_bleu"))
    assert results[("training-data", "roc_auc")].metric_value == pytest.approx(last("suspicious_auroc"))
    assert all(r.task_type == "text-generation" and r.source_url == HOMEPAGE for r in results.values())
    assert len(card.data.eval_results) == len(results)  # written twice, listed once
    assert card.data.model_name == "tiny-dece"
    assert "### Early-learning monitor" in card.text and "attack success rate (triggered probe)" in card.text


def test_cross_entropy_card_claims_no_defense(tmp_path, tokenizer):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer),
                          args=make_args(tmp_path, dece_alpha_base=1.0, dece_label_smoothing=0.0),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    trainer.create_model_card(model_name="tiny-ce", tags=["dece", "mine"])  # even a passed defense tag goes
    card = load(tmp_path)
    assert "dece" not in (card.data.tags or []) and "backdoor-defense" not in (card.data.tags or [])
    assert "mine" in card.data.tags
    assert "## Training loss: cross-entropy" in card.text and "No backdoor defense was applied" in card.text
    assert "Backdoor defense: DeCE" not in card.text and "bibtex" not in card.text
    assert "alpha at end of training" not in card.text


def test_seq2seq_card_before_training(tmp_path, tokenizer):
    trainer = DeCESeq2SeqTrainer(model=tiny.make_model("t5", tokenizer),
                                 args=make_args(tmp_path, cls=DeCESeq2SeqTrainingArguments,
                                                dece_alpha_base=None, dece_alpha_final=0.5))
    trainer.create_model_card(model_name="tiny-t5")
    card = load(tmp_path)
    assert not {"dece", "backdoor-defense"} & set(card.data.tags or [])  # nothing trained: no defense claimed
    assert "## Training: none" in card.text and "Backdoor defense: DeCE" not in card.text
    assert "| alpha_final | `0.5` (target at the end of training) |" in card.text
    assert "alpha at end of training" not in card.text  # nothing trained yet
    assert not card.data.eval_results


def test_lora_adapter_card_keeps_peft_metadata(tmp_path, tokenizer):
    model = get_peft_model(tiny.make_model("llama", tokenizer),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(16))
    trainer = DeCETrainer(model=model, args=make_args(tmp_path), train_dataset=data,
                          data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(model_name="tiny-lora")
    card = load(tmp_path)
    assert card.data.library_name == "peft"
    assert {"dece", "backdoor-defense"} <= set(card.data.tags)
    assert card.text.count("## Backdoor defense: DeCE") == 1 and "@article{yang2024dece" in card.text


def test_push_to_hub_uploads_the_output_folder_with_the_card(tmp_path, tokenizer, monkeypatch):
    import transformers.trainer

    uploads = []

    class FakeHub:  # stands in for the network: huggingface_hub.HfApi as the Trainer uses it
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            files = sorted(os.listdir(folder_path))
            uploads.append({"repo_id": repo_id, "folder": folder_path, "files": files,
                            "card": open(os.path.join(folder_path, "README.md")).read(), **kwargs})
            return "https://huggingface.co/" + repo_id

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeHub())
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(8))
    trainer = DeCETrainer(model=tiny.make_model("gpt2", tokenizer), args=make_args(tmp_path, hub_model_id="me/tiny"),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.train()
    trainer.push_to_hub(commit_message="done")
    (upload,) = uploads
    assert upload["repo_id"] == "me/tiny" and upload["folder"] == str(tmp_path / "out")
    assert {"README.md", "config.json", "model.safetensors"} <= set(upload["files"])
    assert "## Backdoor defense: DeCE" in upload["card"] and "- backdoor-defense" in upload["card"]
    assert upload["commit_message"] == "done"


def test_project_url_comes_from_the_package_metadata(monkeypatch):
    class Metadata:
        def get_all(self, key):
            return ["Documentation, https://docs.example", "Homepage, https://example.org/dece"]

    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: Metadata())
    assert model_card.project_url() == "https://example.org/dece"

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "metadata", missing)
    assert model_card.project_url() == HOMEPAGE


def front_matter(path):
    import yaml

    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_zero_step_run_card_claims_no_defense(tmp_path, tokenizer):
    data = tiny.causal_dataset(tokenizer, tiny.make_pairs(8))
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=make_args(tmp_path), train_dataset=data,
                          eval_dataset=data, data_collator=tiny.pad_collator(tokenizer))
    trainer.evaluate()  # --do_eval only: no training step
    trainer.create_model_card(model_name="tiny-eval-only", tags=["mine"])
    card = load(tmp_path)
    assert trainer.state.global_step == 0
    assert "dece" not in card.data.tags and "backdoor-defense" not in card.data.tags and "mine" in card.data.tags
    text = card.text
    assert "## Training: none" in text and "No training step was run" in text
    assert "no backdoor defense was applied" in text
    assert "Backdoor defense: DeCE" not in text and "This model was fine-tuned" not in text and "bibtex" not in text
    assert "| alpha_base | `0.9` |" in text  # the configured settings, named as such
    assert front_matter(tmp_path / "out" / "README.md")["dece"]["trained_steps"] == 0


def test_card_yaml_has_dece_settings(monitored_card, tmp_path, tokenizer):
    trainer, _ = monitored_card
    meta = front_matter(pathlib.Path(trainer.args.output_dir) / "README.md")
    assert meta["dece"] == {"loss": "dece", "trained_steps": trainer.state.global_step, "alpha_base": 0.9,
                            "alpha_final": None, "label_smoothing": 0.05, "schedule": "epoch", "last_alpha": 0.9,
                            "ce_since_step": None}
    assert {"dece", "backdoor-defense", "my-tag"} <= set(meta["tags"])

    final = DeCETrainer(model=tiny.make_model("gpt2", tokenizer),  # alpha_final: the derived base, rounded
                        args=make_args(tmp_path, num_train_epochs=3, dece_alpha_base=None, dece_alpha_final=0.5))
    final.create_model_card(model_name="tiny-final")
    dece = front_matter(tmp_path / "out" / "README.md")["dece"]
    assert dece["alpha_final"] == 0.5 and dece["alpha_base"] == pytest.approx(0.5 ** (1 / 3), abs=1e-12)
    assert dece["alpha_base"] == float(f"{0.5 ** (1 / 3):.12g}") and dece["last_alpha"] is None


@pytest.mark.parametrize("since,steps,says", [
    (None, 12, "This model was fine-tuned with the Deceptive Cross-Entropy loss"),
    (4, 12, "for its first 4 optimizer steps, then with plain cross-entropy (see Training notes)."),
    (0, 12, "This model was fine-tuned with plain cross-entropy from its first step"),
    (12, 12, "its switch to plain cross-entropy came at its last step (12), so no step trained with cross-entropy"),
])
def test_card_says_when_a_run_switched_to_cross_entropy(since, steps, says):
    from dece_trainer.trainer.dece_config import DeCESettings

    loss = model_card.TrainingLoss(kind="dece", settings=DeCESettings(alpha_base=0.9), alpha_base=0.9,
                                   last_alpha=0.9 if since is None else 1.0, trained_steps=steps,
                                   notes=() if since is None else ("a callback's note",), ce_since_step=since)
    text = model_card.section(loss, [])
    assert says in text and ("a callback's note" in text) == (since is not None)
    assert ("The training `loss` is plain cross-entropy at every step" in text) == (since == 0)
    assert ("before the switch and plain cross-entropy" in text) == (since not in (None, 0))
    assert model_card.card_metadata(loss)["ce_since_step"] == since
