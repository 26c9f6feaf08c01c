"""FSDP2 (``torch.distributed.fsdp.fully_shard``) on CPU over gloo, 2 processes: the fused DeCE head computes on the
gathered LM head (`fused_head.full_parameters` / `fused_head.DeCEHead`), and the loss and every gradient equal one
process's on the whole batch.

Each process takes half of the batch, as data-parallel training does; the loss is divided by the whole batch's label
tokens and multiplied by the number of processes, as the trainer does (FSDP averages gradients over processes).
The backbone is sharded layer by layer (its own gradients are FSDP's reduce-scatter); the LM head is its own FSDP
unit whose forward never runs, so its weight reaches the head as a sharded ``DTensor``: the path under test.
"""

import json
import os

import pytest
import torch

pytestmark = pytest.mark.slow

WORLD = 2
ALPHA, SMOOTHING = 0.8, 0.05


def _batch(tokenizer):
    from tests import tiny

    rows = tiny.poison(tiny.make_pairs(4, seed=1), 0.25, seed=1)
    for i, row in enumerate(rows):  # rows of different lengths: the two halves hold different token counts
        row["target"] = " ".join(row["target"].split()[: 6 + 5 * i])
    data = tiny.causal_dataset(tokenizer, rows)
    return tiny.pad_collator(tokenizer)([data[i] for i in range(len(rows))])


def _head_loss(model, batch, num_items):
    from dece_trainer.trainer.fused_head import DeCEHead

    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    head = DeCEHead(alpha=ALPHA, label_smoothing=SMOOTHING, num_items_in_batch=num_items)
    return head(hidden[:, :-1], model.lm_head, batch["labels"][:, 1:]).loss


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from dece_trainer.trainer.fused_head import DeCEHead, full_parameters
    from tests import tiny

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        tokenizer = tiny.train_tokenizer()
        model = tiny.make_model("llama", tokenizer)  # untied LM head (LlamaConfig's default)
        single = copy.deepcopy(model)
        batch = _batch(tokenizer)
        num_items = int((batch["labels"][:, 1:] != -100).sum())  # the whole batch's, as the Trainer gathers it

        reference = _head_loss(single, batch, num_items)  # one process, the whole batch
        reference.backward()

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model.model)
        fully_shard(model.lm_head)
        sharded_head = isinstance(model.lm_head.weight, DTensor)
        with full_parameters(model.lm_head) as (weight, _):
            gathered_shape = tuple(weight.shape)
        half = {k: v[rank * 2:(rank + 1) * 2] for k, v in batch.items()}
        loss = _head_loss(model, half, num_items)
        (loss * WORLD).backward()  # the trainer's scaling for data parallelism
        total = loss.detach().clone()
        dist.all_reduce(total)

        errors = {}
        grads = dict(single.named_parameters())
        for name, param in model.named_parameters():
            errors[name] = float((_full(param.grad) - grads[name].grad).abs().max())
        scale = {name: float(p.grad.abs().max()) for name, p in grads.items()}

        # a head with a bias, sharded alone, fed hidden states directly: the bias and the hidden states' gradients
        torch.manual_seed(0)
        linear = torch.nn.Linear(16, 40, bias=True)
        hidden = torch.randn(4, 5, 16)
        targets = torch.randint(0, 40, (4, 5))
        targets[0, :2] = -100
        count = int((targets != -100).sum())
        one = copy.deepcopy(linear)
        h_one = hidden.clone().requires_grad_(True)
        DeCEHead(ALPHA, SMOOTHING, num_items_in_batch=count)(h_one, one, targets).loss.backward()
        fully_shard(linear)
        h_half = hidden[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
        part = DeCEHead(ALPHA, SMOOTHING, num_items_in_batch=count)(h_half, linear, targets[rank * 2:(rank + 1) * 2])
        (part.loss * WORLD).backward()
        linear_errors = {
            "weight": float((_full(linear.weight.grad) - one.weight.grad).abs().max()),
            "bias": float((_full(linear.bias.grad) - one.bias.grad).abs().max()),
            # not a parameter, so not averaged by FSDP: the loss's factor WORLD stays in it
            "hidden": float((h_half.grad - WORLD * h_one.grad[rank * 2:(rank + 1) * 2]).abs().max()),
        }
        record = {"sharded_head": sharded_head, "gathered_shape": gathered_shape,
                  "full_shape": tuple(single.lm_head.weight.shape), "loss": float(total),
                  "reference_loss": float(reference.detach()), "errors": errors, "scale": scale,
                  "linear": linear_errors}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
    finally:
        dist.destroy_process_group()


def test_fsdp2_fused_dece_matches_one_process(tmp_path):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["sharded_head"], "the LM head was not a sharded DTensor: the gathered path did not run"
        assert record["gathered_shape"] == record["full_shape"]  # the head computes on the whole weight
        assert record["loss"] == pytest.approx(record["reference_loss"], rel=1e-5)
        for name, err in record["errors"].items():
            assert err <= 1e-5 * max(1.0, record["scale"][name]), (rank, name, err, record["scale"][name])
        assert record["errors"]["lm_head.weight"] <= 1e-6, record["errors"]["lm_head.weight"]
        assert max(record["linear"].values()) <= 1e-6, record["linear"]
