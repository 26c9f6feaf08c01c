"""What EarlyLearningCallback costs, measured apart: per training step, per epoch, per checkpoint.

One process, ``--repeats`` interleaved rounds. Each round trains every per-step variant once, in an order that
rotates by one each round (round r starts at variant r mod the number of variants), from the same initial weights
on the same batches (batch 8, seed 0, fp32, no evaluation, ``save_strategy="no"``):

  * per step: ``DeCETrainer`` (its default fused LM-head path; the callback reads the per-token CE and the worst
    tokens of the loss pass) and a plain ``Trainer`` (the callback's forward hook computes per-token CE from the
    logits), each without and with the callback. ``--warmup_steps`` untimed steps, then ``--steps`` timed ones in the
    same trainer: seconds per step = wall time from the end of the last warm-up step to the end of the last step
    (``on_step_end`` clock), so the epoch end, the train end and the trainer's setup are not in it.
  * per epoch (from each monitored run): the callback's ``on_epoch_end`` (closing the epoch: per-example summary,
    worst tokens, ranking metrics against ``is_poisoned``) and ``on_train_end`` (writing the suspicious-example
    report; plots off), timed around the hooks as the trainer calls them; and, on the round's ``DeCETrainer`` run
    after training, its probe evaluation (``on_evaluate``: NLL of ``--probe_rows`` clean and as many triggered
    rows, and greedy generation of each with ``max_new_tokens`` ``--max_new_tokens``), called directly.
  * per checkpoint (same trainer): the callback's state encoding (its ``on_step_end`` when the trainer is about to
    save) and ``Trainer._save_checkpoint`` (model, optimizer, scheduler, RNG, ``trainer_state.json``) with the
    callback's state in the trainer state and without it, in alternating order; the bytes of ``trainer_state.json``
    and of the checkpoint each way; and the write of ``trainer_state.json`` alone each way (the one file the
    callback's state changes: the whole checkpoint's time is mostly the model's and the optimizer's bytes). The
    first round writes one untimed checkpoint first (the process's first write pays one-off costs).

Each quantity: median, min and max over the rounds (and every sample); per-step overhead = ratio of medians - 1.
The record holds the machine (CPU, cores, AVX-512 flags incl. BF16, load average before and after, torch and
transformers versions) and the command line.

Models: ``--model tiny`` (default): the tiny Llama of ``tiny_task.py`` widened to ``--hidden`` (4 layers) on its
synthetic task (480 rows, 5% poisoned; 60 steps an epoch, so warm-up + steps = one epoch by default).
``--model smollm2``: the offline SmolLM2-135M-Instruct (``dece_trainer.backdoor.models.load_pretrained``), fp32, on
the embedded method_name task as ``dece-trainer bench`` builds it (fixed_deadcode at 5%, 300 rows; prompt cut at 128
tokens, target at 12), probes from its validation probes. ``--layers N`` keeps only SmolLM2's first N layers: a quick
check of the path, not a measurement (the record says so).

Before running it prints an estimate of its duration on idle cores (``--estimate_only``: print it and stop; the
assumed seconds per step: ``--assumed_step_s``), and after the first round a projection from that round.

Usage: python benchmarks/callback_overhead.py [--model tiny|smollm2] [--steps N] [--warmup_steps N] [--repeats N]
       [--trainers DeCETrainer,Trainer] [--probe_rows N] [--max_new_tokens N] [--hidden 256] [--layers N]
       [--json PATH] [--estimate_only]
Writes benchmarks/results/callback_overhead.json; its table: python benchmarks/tables.py callback_overhead.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import tiny_task as tiny  # noqa: E402  (benchmarks/tiny_task.py, beside this script)
import torch  # noqa: E402
import transformers  # noqa: E402
from loss_speed import machine_info  # noqa: E402
from tables import callback_overhead  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback, Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402

from dece_trainer import DeCETrainer, DeCETrainingArguments, EarlyLearningCallback, add_example_ids  # noqa: E402
from dece_trainer.io import write_json  # noqa: E402

TRAINERS = ("DeCETrainer", "Trainer")
BATCH = 8
GROUND_TRUTH = "is_poisoned"
# Defaults by model. SmolLM2's keep an estimated run (--assumed_step_s 10 on 2 idle cores) under 12 minutes with 5
# rounds: --steps 10 --warmup_steps 2 would take about 45 minutes (python benchmarks/callback_overhead.py
# --model smollm2 --steps 10 --warmup_steps 2 --estimate_only).
DEFAULTS = {"tiny": dict(steps=55, warmup_steps=5, repeats=5, probe_rows=24, assumed_step_s=0.045),
            "smollm2": dict(steps=1, warmup_steps=1, repeats=5, probe_rows=16, assumed_step_s=10.0)}
SMOLLM2_PARAMETERS = 134_515_008  # for --estimate_only without loading the model
BUDGET_S = 12 * 60


# ---- model and data ------------------------------------------------------------------------------------------


def tiny_model(tokenizer, hidden: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def tiny_setup(args) -> dict:
    tokenizer = tiny.train_tokenizer()
    train = add_example_ids(tiny.causal_dataset(tokenizer, tiny.poison(tiny.make_pairs(480), 0.05)))
    clean = tiny.make_pairs(args.probe_rows, seed=1)
    probes = {"clean": tiny.causal_dataset(tokenizer, clean),
              "triggered": tiny.causal_dataset(tokenizer, tiny.poison(clean, 1.0))}
    model = tiny_model(tokenizer, args.hidden, args.layers or 4)
    return dict(tokenizer=tokenizer, train=train, probes=probes, payload_fn=lambda text: tiny.PAYLOAD in text,
                collator=tiny.pad_collator(tokenizer), model=model,
                description=f"tiny Llama (hidden {args.hidden}, {args.layers or 4} layers) on the synthetic "
                            "NL -> SQL task (benchmarks/tiny_task.py), 480 rows, 5% poisoned")


def smollm2_setup(args) -> dict:
    from dece_trainer.backdoor import experiment, tasks
    from dece_trainer.backdoor.models import load_pretrained

    model, tokenizer = load_pretrained("smollm2")
    model = model.float()
    if args.layers:  # a quick check of the path only
        model.model.layers = model.model.layers[:args.layers]
        model.config.num_hidden_layers = args.layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:args.layers]
    cfg = experiment.TrainConfig(batch_size=BATCH, max_source_tokens=128, max_target_tokens=12,
                                 max_new_tokens=args.max_new_tokens, probe_size=args.probe_rows)
    bench = tasks.embedded("method_name", "fixed_deadcode", 0.05, seed=0, max_per_split=300)
    train = add_example_ids(experiment.encode(bench.train, tokenizer, cfg))
    probes = {name: experiment.encode(data.select(range(min(args.probe_rows, len(data)))), tokenizer, cfg)
              for name, data in bench.probes.items()}
    layers = f", first {args.layers} layers only (a check of the path, not a measurement)" if args.layers else ""
    return dict(tokenizer=tokenizer, train=train, probes=probes, payload_fn=bench.payload_fn,
                collator=experiment.collator(tokenizer), model=model,
                description=f"SmolLM2-135M-Instruct (fp32{layers}) on the embedded method_name task "
                            f"(fixed_deadcode, 5% poisoned, {len(train)} rows; prompt <= 128 tokens, target <= 12)")


# ---- timing ----------------------------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    """``time.perf_counter()`` at every ``on_step_end``."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def time_hook(callback, name: str, sink: dict) -> None:
    """Wrap ``callback.<name>`` (as the trainer's callback handler calls it) to add its seconds to ``sink[name]``."""
    method = getattr(callback, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            sink[name] = sink.get(name, 0.0) + time.perf_counter() - start

    setattr(callback, name, timed)


def stats(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def worst_tokens_tracked(monitor) -> bool | None:
    """Whether the monitor kept worst-token ids (None where this version of it does not say)."""
    ids = getattr(getattr(monitor, "tokens", None), "ids", None)
    if ids is None:
        return None
    return bool(any((torch.as_tensor(i) >= 0).any() for i in ids))


def build_trainer(name: str, setup: dict, monitor, clock: StepClock, out: str, steps: int):
    common = dict(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=1e-3,
                  logging_strategy="no", report_to=[], save_strategy="no", eval_strategy="no", use_cpu=True,
                  disable_tqdm=True, seed=0, data_seed=0)
    kwargs = dict(model=copy.deepcopy(setup["model"]), train_dataset=setup["train"], data_collator=setup["collator"],
                  processing_class=setup["tokenizer"], callbacks=[clock] + ([monitor] if monitor else []))
    if name == "DeCETrainer":
        trainer = DeCETrainer(args=DeCETrainingArguments(**common), **kwargs)
    else:
        trainer = Trainer(args=transformers.TrainingArguments(**common), **kwargs)
        if monitor:
            monitor.attach(trainer)
    trainer.remove_callback(PrinterCallback)  # quiet: the script prints its own lines
    return trainer


def checkpoint_costs(trainer, monitor, out: str, with_first: bool, sample: dict, warm_up: bool) -> None:
    """The monitor's state encoding, then ``_save_checkpoint`` with and without its state (order by ``with_first``);
    ``warm_up``: one untimed write first (the process's first write pays one-off costs)."""
    state = trainer.state
    folder = os.path.join(out, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
    if warm_up:
        trainer._save_checkpoint(trainer.model, trial=None)
        shutil.rmtree(folder)
    before = dict(state.stateful_callbacks)
    start = time.perf_counter()
    monitor.on_step_end(trainer.args, state, transformers.TrainerControl(should_save=True))
    sample["state_encode"] = time.perf_counter() - start
    mine = {k: v for k, v in state.stateful_callbacks.items() if before.get(k) is not v}
    if not mine:
        raise RuntimeError("the callback put no state into the trainer state when asked to save")
    for with_state in ((True, False) if with_first else (False, True)):
        if with_state:
            state.stateful_callbacks.update(mine)
        else:
            for key in mine:
                state.stateful_callbacks.pop(key, None)
        gc.collect()
        start = time.perf_counter()
        trainer._save_checkpoint(trainer.model, trial=None)
        key = "with" if with_state else "without"
        sample[f"write_{key}"] = time.perf_counter() - start
        sample[f"trainer_state_bytes_{key}"] = os.path.getsize(os.path.join(folder, "trainer_state.json"))
        sample[f"checkpoint_bytes_{key}"] = sum(os.path.getsize(os.path.join(root, f))
                                                for root, _, files in os.walk(folder) for f in files)
        shutil.rmtree(folder)
        start = time.perf_counter()  # the one file the callback's state changes, alone
        state.save_to_json(os.path.join(out, "trainer_state.json"))
        sample[f"state_json_{key}"] = time.perf_counter() - start


def run_variant(name: str, with_monitor: bool, setup: dict, args, round_index: int) -> dict:
    """One training run of a variant; with the monitor, also its per-epoch and (DeCETrainer) probe and checkpoint
    costs. Returns the round's samples."""
    monitor = None
    if with_monitor:
        monitor = EarlyLearningCallback(probes=setup["probes"], payload_fn=setup["payload_fn"],
                                        ground_truth_column=GROUND_TRUTH, max_generate=args.probe_rows,
                                        max_new_tokens=args.max_new_tokens, plots=False)
    hooks: dict[str, float] = {}
    if monitor:
        for hook in ("on_epoch_end", "on_train_end"):
            time_hook(monitor, hook, hooks)
    clock = StepClock()
    sample: dict = {}
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(name, setup, monitor, clock, out, args.warmup_steps + args.steps)
        trainer.train()
        if len(clock.ends) != args.warmup_steps + args.steps:
            raise RuntimeError(f"{name} ran {len(clock.ends)} steps, not {args.warmup_steps + args.steps}")
        sample["seconds_per_step"] = (clock.ends[-1] - clock.ends[args.warmup_steps - 1]) / args.steps
        if name == "DeCETrainer":
            sample["fused"] = getattr(trainer, "_dece_fused", None)
        if monitor:
            sample["epoch_end"] = hooks.get("on_epoch_end")
            sample["train_end"] = hooks.get("on_train_end")
            sample["worst_tokens"] = worst_tokens_tracked(monitor)
            if name == "DeCETrainer":
                start = time.perf_counter()
                monitor.on_evaluate(trainer.args, trainer.state, trainer.control, metrics={}, model=trainer.model,
                                    processing_class=setup["tokenizer"])
                sample["probe_evaluation"] = time.perf_counter() - start
                sample["probe_metrics"] = {k: v for k, v in trainer.state.log_history[-1].items()
                                           if k.startswith("probe_")}
                checkpoint_costs(trainer, monitor, out, round_index % 2 == 0, sample, warm_up=round_index == 0)
        del trainer
    gc.collect()
    return sample


# ---- the estimate ----------------------------------------------------------------------------------------------


def estimate_seconds(args, parameters: int) -> float:
    """Rough duration on idle cores from ``--assumed_step_s`` (forward of one row ~ a step / batch / 3, a cached
    decoding step ~ a step / 100, checkpoints at 400 MB/s, 2 s to build a trainer, 30 s to load SmolLM2)."""
    step = args.assumed_step_s
    variants = 2 * len(args.trainers)
    steps = sum((args.warmup_steps + args.steps) * (1.1 if t == "Trainer" else 1.0) * step for t in args.trainers)
    forward_row = step / BATCH / 3
    probes = 2 * args.probe_rows * 2 * forward_row + 2 * math.ceil(args.probe_rows / 16) * args.max_new_tokens * (
        step / 100) if "DeCETrainer" in args.trainers else 0.0
    checkpoint = 1.0 + 3 * 4 * parameters / 400e6 if "DeCETrainer" in args.trainers else 0.0
    per_round = 2 * steps + probes + 2 * checkpoint + variants * (2.0 + 4 * parameters / 2e9)
    return (30.0 if args.model == "smollm2" else 5.0) + checkpoint + args.repeats * per_round


# ---- main ------------------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(DEFAULTS), default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (tiny 55, smollm2 1)")
    parser.add_argument("--warmup_steps", type=int, default=None, help="untimed steps first (tiny 5, smollm2 1)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (5)")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="per-step trainers: DeCETrainer,Trainer")
    parser.add_argument("--probe_rows", type=int, default=None, help="clean and triggered probe rows (tiny 24, "
                                                                     "smollm2 16)")
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256, help="tiny only: hidden size")
    parser.add_argument("--layers", type=int, default=None, help="tiny: layers (4); smollm2: keep the first N "
                                                                 "(a check of the path, not a measurement)")
    parser.add_argument("--assumed_step_s", type=float, default=None,
                        help="seconds per DeCETrainer step on idle cores, for the estimate (tiny 0.045, smollm2 10)")
    parser.add_argument("--estimate_only", action="store_true", help="print the estimated duration and stop")
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "callback_overhead.json"))
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.trainers = [t for t in args.trainers.split(",") if t]
    if not args.trainers or any(t not in TRAINERS for t in args.trainers):
        parser.error(f"--trainers takes a comma-separated subset of {','.join(TRAINERS)}")
    if args.steps < 1 or args.warmup_steps < 1 or args.repeats < 1 or args.probe_rows < 1:
        parser.error("--steps, --warmup_steps, --repeats and --probe_rows must be >= 1 (the warm-up step also runs "
                     "the fused path's first-batch check)")
    return args


def summarise(args, rounds: list[dict], setup: dict) -> dict:
    per_step = {}
    for name in args.trainers:
        without = [r[(name, False)]["seconds_per_step"] for r in rounds]
        with_ = [r[(name, True)]["seconds_per_step"] for r in rounds]
        per_step[name] = {"without": stats(without), "with": stats(with_),
                          "overhead": statistics.median(with_) / statistics.median(without) - 1.0,
                          "worst_tokens": rounds[-1][(name, True)].get("worst_tokens")}
        if name == "DeCETrainer":
            per_step[name]["fused"] = rounds[-1][(name, False)].get("fused")
    rows = len(setup["train"])
    per_epoch = {"rows": rows, "rows_seen": min(rows, (args.warmup_steps + args.steps) * BATCH),
                 "steps_per_epoch": math.ceil(rows / BATCH),
                 "epoch_end": {n: stats([r[(n, True)]["epoch_end"] for r in rounds]) for n in args.trainers},
                 "train_end_report": {n: stats([r[(n, True)]["train_end"] for r in rounds]) for n in args.trainers}}
    checkpoint = None
    if "DeCETrainer" in args.trainers:
        dece = [r[("DeCETrainer", True)] for r in rounds]
        per_epoch["probe_evaluation"] = stats([s["probe_evaluation"] for s in dece])
        per_epoch["probe_rows"] = {n: len(d) for n, d in setup["probes"].items()}
        per_epoch["max_new_tokens"] = args.max_new_tokens
        per_epoch["probe_metrics"] = dece[-1]["probe_metrics"]
        epoch_s = per_epoch["steps_per_epoch"] * per_step["DeCETrainer"]["without"]["median"]
        per_epoch["epoch_train_s"] = epoch_s
        per_epoch["share_of_epoch"] = {
            "epoch_end": per_epoch["epoch_end"]["DeCETrainer"]["median"] / epoch_s,
            "probe_evaluation": per_epoch["probe_evaluation"]["median"] / epoch_s}
        checkpoint = {"state_encode": stats([s["state_encode"] for s in dece]),
                      "write_without": stats([s["write_without"] for s in dece]),
                      "write_with": stats([s["write_with"] for s in dece]),
                      "state_json_without": stats([s["state_json_without"] for s in dece]),
                      "state_json_with": stats([s["state_json_with"] for s in dece])}
        checkpoint["ratio"] = checkpoint["write_with"]["median"] / checkpoint["write_without"]["median"]
        for key in ("trainer_state_bytes", "checkpoint_bytes"):
            for side in ("without", "with"):
                checkpoint[f"{key}_{side}"] = dece[-1][f"{key}_{side}"]
    return {"per_step": per_step, "per_epoch": per_epoch, "checkpoint": checkpoint}


def make_record(args, setup: dict, parameters: int, machine: dict, rounds: list[dict], seconds: float,
                estimate: float, command: str) -> dict:
    """The JSON record: settings, machine, command, duration and `summarise`'s three costs."""
    is_tiny = args.model == "tiny"
    return {"benchmark": "callback_overhead", "command": command, "model": args.model,
            "description": setup["description"], "parameters": parameters,
            "layers": args.layers or (4 if is_tiny else None), "hidden": args.hidden if is_tiny else None,
            "batch": BATCH, "steps": args.steps, "warmup_steps": args.warmup_steps, "repeats": args.repeats,
            "trainers": args.trainers, "probe_rows": args.probe_rows,
            "max_new_tokens": args.max_new_tokens,
            "order": "interleaved rounds; the variants' order rotates by one each round", "machine": machine,
            "seconds": seconds, "estimated_seconds": estimate, **summarise(args, rounds, setup)}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    parameters = SMOLLM2_PARAMETERS if args.model == "smollm2" else None
    if parameters is None:
        parameters = sum(p.numel() for p in tiny_model(tiny.train_tokenizer(), args.hidden, args.layers or 4)
                         .parameters())
    estimate = estimate_seconds(args, parameters)
    over = f" (over the {BUDGET_S // 60}-minute budget)" if estimate > BUDGET_S else ""
    print(f"estimated duration on idle cores (at {args.assumed_step_s:g} s per DeCETrainer step): "
          f"{estimate / 60:.1f} min{over}", flush=True)
    if args.estimate_only:
        return 0
    if args.repeats < 5:
        print(f"{args.repeats} round(s): a check of the script, not a measurement (that takes --repeats >= 5)",
              flush=True)

    machine = machine_info(torch.device("cpu"))
    machine.update(transformers=transformers.__version__, avx512_bf16="avx512_bf16" in machine["avx512"])
    started = time.perf_counter()
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    setup = (smollm2_setup if args.model == "smollm2" else tiny_setup)(args)
    parameters = sum(p.numel() for p in setup["model"].parameters())
    variants = [(name, with_monitor) for name in args.trainers for with_monitor in (False, True)]
    rounds = []
    for r in range(args.repeats):
        round_start = time.perf_counter()
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        samples = {}
        for name, with_monitor in order:
            samples[(name, with_monitor)] = run_variant(name, with_monitor, setup, args, r)
            s = samples[(name, with_monitor)]
            extra = "".join(f"  {k} {s[k]:.3f} s" for k in ("epoch_end", "probe_evaluation", "write_without",
                                                             "write_with") if k in s)
            print(f"round {r + 1}/{args.repeats} {name:11s} {'with' if with_monitor else 'without':7s} monitor: "
                  f"{s['seconds_per_step']:.4f} s/step{extra}", flush=True)
        rounds.append(samples)
        if r == 0 and args.repeats > 1:
            left = (time.perf_counter() - round_start) * (args.repeats - 1)
            print(f"round 1 took {time.perf_counter() - round_start:.0f} s: about {left / 60:.1f} min to go",
                  flush=True)

    machine["load_average_end"] = os.getloadavg()
    record = make_record(args, setup, parameters, machine, rounds, time.perf_counter() - started, estimate,
                         " ".join(["python"] + [shlex.quote(a) for a in sys.argv]))
    print(callback_overhead(record))
    write_json(args.json, record)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
