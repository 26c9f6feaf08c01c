"""The bench report: mean and spread over seeds, per table row and per epoch, from hand-made records."""

import json

from dece_trainer.backdoor.report import ResultStore, epoch_rows, epoch_table, markdown_table, summary_rows


def record(loss, seed, asr, bleu, curves, alpha=None):
    key = f"d-badpre-p0.05-{loss}{'' if alpha is None else f'-a{alpha:g}'}-s{seed}"
    return {"key": key, "dataset": "d", "attack": "badpre", "poison_rate": 0.05, "loss": loss, "alpha_base": alpha,
            "seed": seed, "asr": asr, "bleu": bleu, "codebleu": None, "subtoken_f1": 0.5, "false_trigger_rate": 0.0,
            "train_seconds": 10.0, "curves": curves}


def curve(epoch, asr, bleu, nll, ftr=0.0):
    return {"epoch": epoch, "probe_triggered_asr": asr, "probe_clean_asr": ftr, "probe_clean_bleu": bleu,
            "probe_clean_nll": nll}


RECORDS = [record("ce", 0, 0.9, 50.0, [curve(1.0, 0.1, 40.0, 1.0), curve(2.0, 0.8, 50.0, 0.8)]),
           record("ce", 1, 0.7, 54.0, [curve(1.0, 0.3, 44.0, 1.2), curve(2.0, 0.6, 52.0, 0.6, ftr=0.1)]),
           record("dece", 0, 0.0, 49.0, [curve(1.0, 0.0, 41.0, 1.5), curve(2.0, 0.0, 48.0, 1.1)], alpha=0.9)]


def test_summary_rows_mean_and_std_over_seeds():
    rows = {r["loss"]: r for r in summary_rows(RECORDS)}
    assert rows["ce"]["asr"] == "80.00 ± 14.14" and rows["ce"]["bleu"] == "52.00 ± 2.83" and rows["ce"]["seeds"] == 2
    assert rows["dece (alpha_base 0.9)"]["asr"] == "0.00" and rows["ce"]["codebleu"] == "-"
    assert "| ce | 52.00 ± 2.83 | - | 50.00 ± 0.00 | 80.00 ± 14.14 | 0.00 ± 0.00 | 2 |" in markdown_table(RECORDS)


def test_row_labels_name_the_alpha():
    from dece_trainer.backdoor.report import row_label

    assert row_label(RECORDS[0]) == "ce" and row_label(RECORDS[2]) == "dece (alpha_base 0.9)"
    assert row_label({**RECORDS[2], "alpha_base": 0.840896, "alpha_final": 0.5}) == \
        "dece (alpha_final 0.5, alpha_base 0.841)"


def test_epoch_rows_average_each_epoch_over_seeds():
    rows = {(r["loss"], r["epoch"]): r for r in epoch_rows(RECORDS)}
    assert set(rows) == {("ce", 1.0), ("ce", 2.0), ("dece (alpha_base 0.9)", 1.0), ("dece (alpha_base 0.9)", 2.0)}
    assert rows[("ce", 1.0)]["probe_triggered_asr"] == "20.00 ± 14.14"
    assert rows[("ce", 2.0)]["probe_clean_nll"] == "0.70 ± 0.14" and rows[("ce", 2.0)]["seeds"] == 2
    assert rows[("ce", 2.0)]["probe_clean_asr"] == "5.00 ± 7.07"
    line = "| d | 0.05 | ce | 2 | 70.00 ± 14.14 | 5.00 ± 7.07 | 51.00 ± 1.41 | 0.70 ± 0.14 | 2 |"
    assert line in epoch_table(RECORDS)


def test_result_store_keeps_finished_cells_across_instances(tmp_path):
    store = ResultStore(str(tmp_path))
    for r in RECORDS:
        store.add(r)
    store.add({**RECORDS[0], "bleu": 1.0})  # a rerun of a cell replaces its record
    again = ResultStore(str(tmp_path))
    assert len(again.records) == 3 and again.done(RECORDS[2]["key"]) and not again.done("other")
    assert [r["bleu"] for r in again.records if r["key"] == RECORDS[0]["key"]] == [1.0]
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == again.records
    assert not list(tmp_path.glob("*.tmp-*"))


def test_epoch_chart_integer_epochs_visible_zero_lines_and_no_negative_asr():
    import pytest

    pytest.importorskip("matplotlib")
    from dece_trainer.backdoor.report import epoch_curves_figure, pyplot

    zero = [record("dece", 0, 0.0, 49.0, [curve(1.0, 0.0, 41.0, 1.5), curve(2.0, 0.0, 48.0, 1.1),
                                          curve(3.0, 0.0, 48.0, 1.0)], alpha=a) for a in (0.9, 0.8)]
    ce = record("ce", 0, 0.9, 50.0, [curve(1.0, 0.0, 40.0, 1.0), curve(2.0, 0.0, 50.0, 0.8),
                                      curve(3.0, 0.5, 50.0, 0.8)])
    fig = epoch_curves_figure([ce, *zero])
    asr_ax, bleu_ax = fig.axes[:2]
    for ax in (asr_ax, bleu_ax):
        assert ax.get_ylim()[0] == 0  # never a negative ASR (or BLEU) axis
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs, not 1.25, 1.5, ...
    lines = asr_ax.get_lines()
    assert len(lines) == 3 and len({(ln.get_marker(), ln.get_linestyle()) for ln in lines}) == 3
    # the all-zero series lie on each other: each is drawn above the last with a smaller marker, all unclipped
    order = sorted(lines, key=lambda ln: ln.get_zorder())
    assert [ln.get_markersize() for ln in order] == sorted((ln.get_markersize() for ln in lines), reverse=True)
    assert len({ln.get_zorder() for ln in lines}) == 3 and not any(ln.get_clip_on() for ln in lines)
    assert sum(all(y == 0 for y in ln.get_ydata()) for ln in lines) == 2
    pyplot().close(fig)


def test_tables_say_where_the_triggered_probe_came_from():
    note = "the last 4 payload rows of --triggered_test_file t.csv, held out of the test metrics"
    records = [{**r, "triggered_probe": note} for r in RECORDS]
    assert f"Triggered validation probe of d: {note}." in epoch_table(records)
    assert f"Triggered validation probe of d: {note}." in markdown_table(records)
    assert "Triggered validation probe" not in epoch_table(RECORDS)
