"""Code summarization with a CodeT5-style encoder-decoder, defended by DeCE, evaluated with BLEU.

A ``Seq2SeqTrainer`` script (``predict_with_generate``, sacrebleu BLEU in ``compute_metrics``); the DeCE
change is ``DeCESeq2SeqTrainer``/``DeCESeq2SeqTrainingArguments`` in place of
``Seq2SeqTrainer``/``Seq2SeqTrainingArguments``, which also adds the ``--dece_*`` flags.

    # CodeXGLUE code-to-text (Python): function -> its docstring
    python examples/seq2seq_code_summarization.py --model_name_or_path Salesforce/codet5-small \
        --dataset_name google/code_x_glue_ct_code_to_text --dataset_config python \
        --source_column code --target_column docstring --max_train_samples 20000 --max_eval_samples 500 \
        --num_train_epochs 3 --dece_alpha_base 0.9 --learning_rate 5e-5 --per_device_train_batch_size 16 \
        --output_dir out/codet5_summarization

    # Offline smoke run: a tiny random T5 and synthetic data, well under a minute on a CPU.
    python examples/seq2seq_code_summarization.py --tiny --output_dir /tmp/summarization --max_steps 20
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import sacrebleu
from datasets import Dataset, DatasetDict, load_dataset
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser

from dece_trainer import DeCESeq2SeqTrainer, DeCESeq2SeqTrainingArguments


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="Salesforce/codet5-small", metadata={"help": "Hub id or local path."})
    dataset_name: str = "google/code_x_glue_ct_code_to_text"
    dataset_config: str | None = "python"
    source_column: str = "code"
    target_column: str = "docstring"
    max_source_length: int = 256
    max_target_length: int = 64
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    tiny: bool = field(default=False, metadata={"help": "Offline run: tiny random model, synthetic data."})


def load_data(script: ScriptArguments, output_dir: str) -> tuple[str, DatasetDict]:
    """The model path and ``train``/``validation`` splits, from the arguments or (``--tiny``) built locally."""
    if script.tiny:
        import _tiny

        rows = _tiny.code_pairs(80)
        path = _tiny.tiny_checkpoint("seq2seq", [r["description"] + " " + r["code"] for r in rows],
                                     os.path.join(output_dir, "tiny_base_model"))
        script.source_column, script.target_column = "code", "description"
        data = Dataset.from_list(rows).train_test_split(test_size=16, seed=0)
        return path, DatasetDict(train=data["train"], validation=data["test"])
    data = load_dataset(script.dataset_name, script.dataset_config)
    for split, limit in (("train", script.max_train_samples), ("validation", script.max_eval_samples)):
        if limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    return script.model_name_or_path, data


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, DeCESeq2SeqTrainingArguments))
    script, args = parser.parse_args_into_dataclasses()
    args.predict_with_generate = True  # BLEU is computed on generated summaries
    args.generation_max_length = args.generation_max_length or script.max_target_length
    model_path, data = load_data(script, args.output_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_path)

    def tokenize(batch):
        features = tokenizer(batch[script.source_column], max_length=script.max_source_length, truncation=True)
        targets = tokenizer(text_target=batch[script.target_column], max_length=script.max_target_length,
                            truncation=True)
        features["labels"] = targets["input_ids"]
        return features

    columns = data["train"].column_names
    train = data["train"].map(tokenize, batched=True, remove_columns=columns)
    valid = data["validation"].map(tokenize, batched=True, remove_columns=columns)

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        hypotheses = [t.strip() for t in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        references = [t.strip() for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score}

    trainer = DeCESeq2SeqTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=valid, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), compute_metrics=compute_metrics,
    )
    result = trainer.train()
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()


if __name__ == "__main__":
    main()
