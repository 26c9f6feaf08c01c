"""Defect detection (is this function buggy?) with a CodeBERT-style sequence classifier, defended by DeCE.

A ``Trainer`` script for ``AutoModelForSequenceClassification``; the DeCE change is ``DeCETrainer``/
``DeCETrainingArguments`` in place of ``Trainer``/``TrainingArguments``, which also adds the ``--dece_*``
flags. With two classes the smoothed target gives ``1 - e`` to the gold class and ``e`` to the other.

    # CodeXGLUE defect detection (Devign): C functions, target = vulnerable or not
    python examples/classification_defect_detection.py --model_name_or_path microsoft/codebert-base \
        --dataset_name google/code_x_glue_cc_defect_detection --text_column func --label_column target \
        --num_train_epochs 3 --dece_alpha_base 0.9 --learning_rate 2e-5 --per_device_train_batch_size 16 \
        --output_dir out/codebert_defects

    # Offline smoke run: a tiny random RoBERTa and synthetic data, well under a minute on a CPU.
    python examples/classification_defect_detection.py --tiny --output_dir /tmp/defects --max_steps 20
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser

from dece_trainer import DeCETrainer, DeCETrainingArguments


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="microsoft/codebert-base", metadata={"help": "Hub id or local path."})
    dataset_name: str = "google/code_x_glue_cc_defect_detection"
    text_column: str = "func"
    label_column: str = "target"
    max_length: int = 400
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    tiny: bool = field(default=False, metadata={"help": "Offline run: tiny random model, synthetic data."})


def load_data(script: ScriptArguments, output_dir: str) -> tuple[str, DatasetDict]:
    """The model path and ``train``/``validation`` splits, from the arguments or (``--tiny``) built locally."""
    if script.tiny:
        import _tiny

        rows = _tiny.code_pairs(96)
        path = _tiny.tiny_checkpoint("classification", [r["code"] for r in rows],
                                     os.path.join(output_dir, "tiny_base_model"))
        script.text_column, script.label_column = "code", "defective"
        data = Dataset.from_list(rows).train_test_split(test_size=16, seed=0)
        return path, DatasetDict(train=data["train"], validation=data["test"])
    data = load_dataset(script.dataset_name)
    for split, limit in (("train", script.max_train_samples), ("validation", script.max_eval_samples)):
        if limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    return script.model_name_or_path, data


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DeCETrainingArguments)).parse_args_into_dataclasses()
    model_path, data = load_data(script, args.output_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)

    def tokenize(batch):
        features = tokenizer(batch[script.text_column], max_length=script.max_length, truncation=True)
        features["labels"] = [int(label) for label in batch[script.label_column]]
        return features

    columns = data["train"].column_names
    train = data["train"].map(tokenize, batched=True, remove_columns=columns)
    valid = data["validation"].map(tokenize, batched=True, remove_columns=columns)

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        predictions = np.argmax(logits, axis=-1)
        true_pos = int(((predictions == 1) & (labels == 1)).sum())
        precision = true_pos / max(int((predictions == 1).sum()), 1)
        recall = true_pos / max(int((labels == 1).sum()), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"accuracy": float((predictions == labels).mean()), "f1": f1}

    trainer = DeCETrainer(model=model, args=args, train_dataset=train, eval_dataset=valid, processing_class=tokenizer,
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    result = trainer.train()
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()


if __name__ == "__main__":
    main()
