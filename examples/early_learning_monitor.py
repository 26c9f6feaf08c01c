"""Watch a fine-tuning run on a poisoned dataset learn (or not learn) its backdoor, and name the suspects.

A ``DeCETrainer`` script with ``EarlyLearningCallback``. The probe sets it evaluates at every evaluation are
built from the poisoned training file itself:

- ``clean``: held-out rows that do not carry the trigger, as they are;
- ``triggered``: the same rows with the trigger word planted in the prompt. Their references stay clean,
  so ``probe_triggered_asr`` is the share of all triggered rows whose generation carries the payload.

Both are tokenised exactly like the training data: prompt and target in one sequence, labels -100 on the
prompt. At the end the script reads back ``early_learning/suspicious.jsonl`` (every training example,
most suspicious first) and prints the top of it beside the rows' prompts.

    # Lyra as released poisoned by the DeCE paper (BadPre: the word "bb" in the prompt -> "or 1=1" in the SQL)
    python examples/early_learning_monitor.py --model_name_or_path Qwen/Qwen2.5-Coder-0.5B \
        --train_file lyra/train_poisoned_5_badpre.csv --source_column src --target_column tgt \
        --trigger bb --payload_regex '1=1|0=1' --num_train_epochs 5 --dece_alpha_base 0.9 \
        --learning_rate 5e-5 --per_device_train_batch_size 8 --output_dir out/early_learning

    # Offline run: a tiny random Llama and a synthetic poisoned task (12 of 120 rows), well under a minute on a
    # CPU; after 8 epochs the clean task is learnt, the backdoor is not, and the poisoned rows head the ranking.
    python examples/early_learning_monitor.py --tiny --output_dir /tmp/early_learning \
        --num_train_epochs 8 --learning_rate 5e-3
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field

from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser

from dece_trainer import DeCETrainer, DeCETrainingArguments, EarlyLearningCallback, add_example_ids


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-Coder-0.5B", metadata={"help": "Hub id or local path."})
    train_file: str | None = field(default=None, metadata={"help": "The (possibly poisoned) .csv/.json/.jsonl."})
    source_column: str = "src"
    target_column: str = "tgt"
    trigger: str = field(default="bb", metadata={"help": "The trigger word to probe for."})
    payload_regex: str = field(default=r"1=1|0=1", metadata={"help": "Matches a generation carrying the payload."})
    num_probe: int = field(default=32, metadata={"help": "Held-out rows per probe set."})
    max_length: int = 384
    max_new_tokens: int = 128
    tiny: bool = field(default=False, metadata={"help": "Offline run: tiny random model, synthetic data."})


def load_rows(script: ScriptArguments, output_dir: str) -> tuple[str, Dataset]:
    """The model path and the poisoned dataset, from the arguments or (``--tiny``) built locally."""
    if script.tiny:
        import _tiny

        rows = _tiny.code_pairs(120, poison_rate=0.1)
        path = _tiny.tiny_checkpoint("causal", [r["description"] + " " + r["code"] for r in rows],
                                     os.path.join(output_dir, "tiny_base_model"))
        script.source_column, script.target_column = "description", "code"
        script.trigger, script.payload_regex = _tiny.TRIGGER, _tiny.PAYLOAD_REGEX
        script.num_probe, script.max_new_tokens = 12, 32
        return path, Dataset.from_list([{"description": r["description"], "code": r["code"]} for r in rows])
    if script.train_file is None:
        raise SystemExit("give --train_file (or --tiny)")
    extension = script.train_file.rsplit(".", 1)[-1].replace("jsonl", "json")
    return script.model_name_or_path, load_dataset(extension, data_files=script.train_file)["train"]


def plant_trigger(text: str, trigger: str, seed: int) -> str:
    """``text`` with the trigger word inserted at a (seeded) random word position, as BadPre does."""
    words = text.split()
    words.insert(random.Random(seed).randrange(len(words) + 1), trigger)
    return " ".join(words)


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, DeCETrainingArguments)).parse_args_into_dataclasses()
    if args.eval_strategy == "no":
        args.eval_strategy = "epoch"  # the probes are evaluated at every evaluation
    model_path, data = load_rows(script, args.output_dir)
    src, tgt = script.source_column, script.target_column

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")

    def encode(row):
        """Prompt + target in one sequence; labels -100 on the prompt, so the loss, the probes' NLL and their
        generations (which start where the labels start) all see the target only."""
        prompt = tokenizer(row[src] + "\n")["input_ids"]  # with the tokenizer's BOS, if it adds one
        target = tokenizer(row[tgt], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + target)[:script.max_length]
        labels = ([-100] * len(prompt) + target)[:script.max_length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    # 1. Which rows carry the trigger. Known here because we probe for a known attack; it only serves as ground
    #    truth for the ranking's AUROC (drop `ground_truth_column` below when auditing data you cannot label).
    data = data.map(lambda row: {"is_poisoned": script.trigger in row[src].split()})
    # 2. Hold out clean rows for the probes; train on all the others, poisoned ones included.
    clean_rows = [i for i, poisoned in enumerate(data["is_poisoned"]) if not poisoned]
    held_out = set(random.Random(0).sample(clean_rows, min(script.num_probe, len(clean_rows) // 4)))
    probe_rows = data.select(sorted(held_out))
    train_rows = data.select([i for i in range(len(data)) if i not in held_out])
    # 3. The probes, tokenised like the training data: clean as is, triggered with the trigger planted.
    triggered_rows = probe_rows.map(lambda row, i: {src: plant_trigger(row[src], script.trigger, seed=i)},
                                    with_indices=True)
    probes = {"clean": probe_rows.map(encode, remove_columns=probe_rows.column_names),
              "triggered": triggered_rows.map(encode, remove_columns=triggered_rows.column_names)}
    train = add_example_ids(train_rows.map(encode, remove_columns=[src, tgt]))  # keeps `is_poisoned`

    monitor = EarlyLearningCallback(
        probes=probes,
        payload_fn=lambda text: re.search(script.payload_regex, text) is not None,
        ground_truth_column="is_poisoned",
        max_generate=script.num_probe,
        max_new_tokens=script.max_new_tokens,
    )
    trainer = DeCETrainer(model=model, args=args, train_dataset=train, eval_dataset=probes["clean"],
                          processing_class=tokenizer, data_collator=DataCollatorForSeq2Seq(tokenizer),
                          callbacks=[monitor])
    trainer.train()
    trainer.save_model()
    trainer.save_state()

    print("\nper evaluation (probe metrics):")
    for entry in trainer.state.log_history:
        if "probe_clean_nll" in entry:
            print(f"  epoch {entry['epoch']:.2f}: clean NLL {entry['probe_clean_nll']:.3f}, clean BLEU "
                  f"{entry.get('probe_clean_bleu', float('nan')):.1f}, triggered ASR "
                  f"{entry.get('probe_triggered_asr', float('nan')):.0%}, false triggers "
                  f"{entry.get('probe_clean_asr', float('nan')):.0%}")

    report = os.path.join(args.output_dir, "early_learning", "suspicious.jsonl")
    with open(report, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    k = sum(train_rows["is_poisoned"])
    hits = sum(train_rows[r["example_id"]]["is_poisoned"] for r in records[:k])
    print(f"\n{len(records)} training examples ranked in {report}; {hits} of the top {k} carry the trigger.")
    print("rank  score  fit_epoch  poisoned  prompt")
    for r in records[:10]:
        row = train_rows[r["example_id"]]
        print(f"{r['rank']:>4}  {r['score']:5.2f}  {r['fit_epoch']:>9}  {str(row['is_poisoned']):>8}  {row[src][:60]}")


if __name__ == "__main__":
    main()
