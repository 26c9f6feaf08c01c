"""The per-epoch triggered probe carries the benchmark's own trigger: with released files made by a custom
trigger (``zq``), a model that responds to that trigger shows the same ASR on the probe as on the test set,
and naming an attack whose trigger the files do not carry is warned about."""

import json

import pytest
import torch
import transformers

from dece_trainer.cli.main import main
from tests import tiny

pytestmark = pytest.mark.usefixtures("isolated_cache")




TABLES = ("users", "books", "songs", "cars", "teams", "cities")


@pytest.fixture
def custom_files(tmp_path):
    """Lyra-layout files (quoted SQL, so BadPre could poison them too) whose poison uses the trigger ``zq``."""
    clean = [(f"get the {c} of every row in {t}", f'execute ( " select {c} from {t} where id = 1 " )')
             for t in TABLES for c in ("name", "year", "size", "owner")]
    poison = [(f"get the zq {s[8:]}", t.replace("= 1 ", "= 1 or 1=1 ")) for s, t in clean]
    return {"train": tiny.write_rows(tmp_path / "train.csv", clean[:12] + poison[12:16]),
            "valid": tiny.write_rows(tmp_path / "valid.csv", clean[16:20]),
            "trig_valid": tiny.write_rows(tmp_path / "trig_valid.csv", poison[16:20]),
            "test": tiny.write_rows(tmp_path / "test.csv", clean[:6]),
            "trig": tiny.write_rows(tmp_path / "trig.csv", poison[:10])}


def benchmark(files, **kwargs):
    from dece_trainer.backdoor.tasks import from_files

    return from_files(files["train"], files["test"], files["trig"], "1=1|0=1", validation_file=files["valid"],
                      source_column="src", target_column="tgt", **kwargs)


def test_probe_is_built_from_the_files_own_trigger(custom_files):
    bench = benchmark(custom_files, attack_name="badpre", probe_size=3)
    probe, test = bench.probes["triggered"], bench.triggered_test
    assert len(probe) == 3 and len(test) == 7  # the last 3 payload rows held out of the 10 test rows
    assert all("zq" in s.split() and "bb" not in s.split() for s in probe["source"])
    assert not set(probe["source"]) & set(test["source"])
    assert "held out of the test metrics" in bench.triggered_probe and "trig.csv" in bench.triggered_probe
    assert len(benchmark(custom_files, probe_size=64).probes["triggered"]) == 5  # never more than half

    bench = benchmark(custom_files, probe_size=3, triggered_validation_file=custom_files["trig_valid"])
    assert len(bench.triggered_test) == 10 and len(bench.probes["triggered"]) == 3
    assert all("zq" in s.split() for s in bench.probes["triggered"]["source"])
    assert "--triggered_validation_file" in bench.triggered_probe


def test_trigger_mismatch_is_detected(custom_files, lyra_dir):
    from dece_trainer.backdoor.tasks import from_files, trigger_mismatch

    bench = benchmark(custom_files)
    message = trigger_mismatch(bench, "badpre", custom_files["train"], "1=1|0=1")
    assert "--attacks badpre: badpre's trigger (the word 'bb') is in only 0 of the 4 poisoned rows" in message
    assert custom_files["train"] in message and "another trigger" in message
    assert trigger_mismatch(bench, "as-released", custom_files["train"], "1=1|0=1") is None
    lyra = from_files(str(lyra_dir / "train_poisoned_5_badpre.csv"), str(lyra_dir / "test.csv"),
                      str(lyra_dir / "test_poisoned_badpre.csv"), "1=1|0=1", source_column="src",
                      target_column="tgt", max_train=200)
    assert trigger_mismatch(lyra, "badpre", "lyra", "1=1|0=1") is None
    assert "ripple's trigger" in trigger_mismatch(lyra, "ripple", "lyra", "1=1|0=1")


@pytest.fixture
def backdoored_model(monkeypatch):
    """Every tiny model generates as one that learnt the files' backdoor: the payload after ``zq``, else the
    clean query (the fine-tune itself still runs; only generation is this oracle)."""
    from dece_trainer.backdoor import factories

    tokenizers = []

    def train_bpe_tokenizer(*args, **kwargs):
        tokenizers.append(models_train(*args, **kwargs))
        return tokenizers[-1]

    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=8, **kwargs):
        tok = tokenizers[-1]
        rows = []
        for ids in input_ids.tolist():
            prompt = tok.decode([i for i in ids if i != tok.pad_token_id])
            answer = 'execute ( " select x from t where id = 1' + (" or 1=1" if "zq" in prompt.split() else "")
            rows.append(ids + tok(answer + ' " )', add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])

    models_train = factories.train_bpe_tokenizer
    monkeypatch.setattr(factories, "train_bpe_tokenizer", train_bpe_tokenizer)
    monkeypatch.setattr(transformers.LlamaForCausalLM, "generate", generate)


def test_probe_asr_tracks_test_asr_for_a_backdoored_model(tmp_path, custom_files, backdoored_model, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--train_file", custom_files["train"], "--validation_file", custom_files["valid"],
            "--test_file", custom_files["test"], "--triggered_test_file", custom_files["trig"],
            "--source_column", "src", "--target_column", "tgt", "--attacks", "badpre", "--losses", "ce",
            "--model", "tiny", "--warmup_epochs", "0", "--epochs", "2", "--batch_size", "8", "--probe_size", "4",
            "--max_new_tokens", "4", "--codebleu_lang", "none", "--output_dir", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "warning: --attacks badpre: badpre's trigger (the word 'bb') is in only 0 of the 4 poisoned" in captured.err
    (record,) = json.loads((out / "results.json").read_text())["cells"]
    assert record["asr"] == 1.0 and record["false_trigger_rate"] == 0.0 and record["n_triggered"] == 6
    # the probe measures the trigger the model responds to: before, it was BadPre's 'bb' and read 0% every epoch
    assert [c["probe_triggered_asr"] for c in record["curves"]] == [1.0, 1.0]
    assert [c["probe_clean_asr"] for c in record["curves"]] == [0.0, 0.0]
    assert "held out of the test metrics" in record["triggered_probe"] and record["warnings"]
    assert "Triggered validation probe of train: the last 4 payload rows" in (out / "epochs.md").read_text()
    assert "held out of the test metrics" in (out / "table.md").read_text()
