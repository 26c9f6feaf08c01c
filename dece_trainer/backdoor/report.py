"""Results: an atomic, resumable ``results.json``, the paper-layout markdown table, the per-epoch table, and
the charts (alpha sweep, per-epoch curves)."""

from __future__ import annotations

import json
import math
import os
import statistics

from ..io import write_json
from ..plotting import pyplot, save_figure
from .grid import ALPHA_LOSSES

METRICS = ("bleu", "codebleu", "subtoken_f1", "asr", "false_trigger_rate")


class ResultStore:
    """``results.json`` in ``output_dir``: one record per finished cell, rewritten atomically after each."""

    def __init__(self, output_dir: str):
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, "results.json")
        self.records: list[dict] = []
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.records = json.load(f)["cells"]

    def done(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> dict | None:
        """The finished cell's record, or None."""
        return next((r for r in self.records if r["key"] == key), None)

    def add(self, record: dict) -> None:
        self.records = [r for r in self.records if r["key"] != record["key"]] + [record]
        write_json(self.path, {"cells": self.records})


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def row_label(record: dict) -> str:
    """A table row's name: the loss, its alpha, and a filter or continue cell's fence and a continue cell's switch
    epoch (where its record has them)."""
    defense = record.get("filter") or record.get("continue") or {}
    suffix = f", fence {defense['fence']:g}" if defense.get("fence") is not None else ""
    if defense.get("switch_epoch") is not None:
        suffix += f", switch at epoch {defense['switch_epoch']}"
    if record["loss"] in ALPHA_LOSSES and record.get("alpha_final") is not None:
        return (f"{record['loss']} (alpha_final {record['alpha_final']:g}, alpha_base {record['alpha_base']:.3g})"
                f"{suffix}")
    if record["loss"] in ALPHA_LOSSES:
        return f"{record['loss']} (alpha_base {record['alpha_base']:g}){suffix}"
    return record["loss"]


def summary_rows(records: list[dict]) -> list[dict]:
    """Mean and spread over seeds, per (dataset, poison rate, loss/alpha, attack)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["poison_rate"], row_label(r), r["attack"]), []).append(r)
    rows = []
    for (dataset, rate, label, attack), cells in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        row = {"dataset": dataset, "poison_rate": rate, "loss": label, "attack": attack, "seeds": len(cells)}
        for metric in METRICS:
            scale = 100.0 if metric in ("asr", "false_trigger_rate", "subtoken_f1") else 1.0
            row[metric] = _mean_std([c[metric] * scale if c.get(metric) is not None else None for c in cells])
        row["train_seconds"] = _mean_std([c["train_seconds"] for c in cells])
        rows.append(row)
    return rows


def markdown_table(records: list[dict]) -> str:
    """The paper's layout: one row per loss, per attack its BLEU / CodeBLEU / ASR (%), mean ± std over seeds,
    plus subtoken F1 (%), the clean metric of short outputs, and the false-trigger rate (FTR, %)."""
    rows = summary_rows(records)
    attacks = sorted({r["attack"] for r in rows})
    lines = []
    for (dataset, rate) in sorted({(r["dataset"], r["poison_rate"]) for r in rows}, key=str):
        lines.append(f"\n{dataset}, poison rate {rate}\n")
        header = "| loss | " + " | ".join(f"{a} BLEU | {a} CodeBLEU | {a} F1 % | {a} ASR % | {a} FTR %"
                                          for a in attacks)
        lines += [header + " | seeds |", "|" + " --- |" * (1 + len(METRICS) * len(attacks) + 1)]
        labels = sorted({r["loss"] for r in rows if (r["dataset"], r["poison_rate"]) == (dataset, rate)})
        for label in labels:
            cells, seeds = [], 0
            for attack in attacks:
                match = [r for r in rows if (r["dataset"], r["poison_rate"], r["loss"], r["attack"]) ==
                         (dataset, rate, label, attack)]
                if match:
                    cells += [match[0][m] for m in METRICS]
                    seeds = max(seeds, match[0]["seeds"])
                else:
                    cells += ["-"] * len(METRICS)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines).strip() + "\n" + probe_notes(records)


def probe_notes(records: list[dict]) -> str:
    """One line per dataset saying where its per-epoch triggered probe came from (records that say so)."""
    notes = sorted({(r["dataset"], r["triggered_probe"]) for r in records if r.get("triggered_probe")})
    return "".join(f"\nTriggered validation probe of {dataset}: {note}.\n" for dataset, note in notes)


EPOCH_METRICS = ("probe_triggered_asr", "probe_clean_asr", "probe_clean_bleu", "probe_clean_nll")


def epoch_rows(records: list[dict]) -> list[dict]:
    """Per (dataset, poison rate, loss/alpha, epoch): validation-probe ASR and false-trigger rate (%, on the
    triggered and clean probes), clean BLEU and NLL; mean over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        for point in r.get("curves") or []:
            groups.setdefault((r["dataset"], r["poison_rate"], row_label(r), point["epoch"]), []).append(point)
    rows = []
    for (dataset, rate, label, epoch), points in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        row = {"dataset": dataset, "poison_rate": rate, "loss": label, "epoch": epoch, "seeds": len(points)}
        for key in EPOCH_METRICS:
            scale = 100.0 if key.endswith("asr") else 1.0
            row[key] = _mean_std([p[key] * scale if p.get(key) is not None else None for p in points])
        rows.append(row)
    return rows


def epoch_table(records: list[dict]) -> str:
    """Markdown: the per-epoch validation curves of every loss (mean ± std over seeds)."""
    lines = ["| dataset | poison rate | loss | epoch | triggered ASR % | clean FTR % | clean BLEU | clean NLL "
             "| seeds |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in epoch_rows(records):
        lines.append(f"| {r['dataset']} | {r['poison_rate']} | {r['loss']} | {r['epoch']:g} | "
                     + " | ".join(r[k] for k in EPOCH_METRICS) + f" | {r['seeds']} |")
    return "\n".join(lines) + "\n" + probe_notes(records)


# One look per line of a chart: marker, line style, and a marker size that shrinks with the drawing order,
# so a line drawn over another (two all-zero ASR series) leaves the one below visible around its markers.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def line_style(index: int) -> dict:
    return {"marker": MARKERS[index % len(MARKERS)], "linestyle": LINESTYLES[index % len(LINESTYLES)],
            "markersize": max(3.0, 10.0 - 1.5 * index), "zorder": 3 + index, "clip_on": False}


def epoch_curves_figure(records: list[dict]):
    """The figure of `plot_epoch_curves`, or None without matplotlib or curves."""
    plt = pyplot()
    curves: dict[tuple, dict[str, dict[float, list[dict]]]] = {}
    for r in records:
        for point in r.get("curves") or []:
            if all(point.get(k) is not None for k in ("probe_triggered_asr", "probe_clean_bleu")):
                panel = curves.setdefault((r["dataset"], r["poison_rate"]), {})
                panel.setdefault(row_label(r), {}).setdefault(point["epoch"], []).append(point)
    if plt is None or not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(curves), 2, figsize=(9, 3.2 * len(curves)), squeeze=False)
    for (asr_ax, bleu_ax), ((dataset, rate), lines) in zip(axes, sorted(curves.items(), key=str)):
        for index, (label, by_epoch) in enumerate(sorted(lines.items())):
            epochs = sorted(by_epoch)
            for ax, key, scale in ((asr_ax, "probe_triggered_asr", 100.0), (bleu_ax, "probe_clean_bleu", 1.0)):
                values = [[scale * p[key] for p in by_epoch[e]] for e in epochs]
                line, = ax.plot(epochs, [statistics.fmean(v) for v in values], label=label, **line_style(index))
                ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values],
                                color=line.get_color(), alpha=0.15, zorder=1)
        asr_ax.set(title=f"{dataset} ({rate}): triggered validation", xlabel="epoch", ylabel="ASR %")
        bleu_ax.set(title="clean validation", xlabel="epoch", ylabel="BLEU")
        asr_ax.set_ylim(0, 105)  # a rate: never below 0; an all-zero line sits on the axis, markers unclipped
        bleu_ax.set_ylim(bottom=0, top=max(1.0, bleu_ax.get_ylim()[1]))
        for ax in (asr_ax, bleu_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        asr_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_epoch_curves(records: list[dict], path: str) -> bool:
    """Triggered-validation ASR and clean-validation BLEU per epoch, one line per loss/alpha (mean over seeds,
    shaded min-max), one row of panels per (dataset, poison rate). Each line has its own marker and style and
    lines drawn later are thinner-marked on top, so coinciding series (several at ASR 0) all stay visible;
    epochs are whole numbers on the x axis and neither axis goes below 0. False without matplotlib or curves."""
    fig = epoch_curves_figure(records)
    if fig is None:
        return False
    save_figure(fig, path)
    pyplot().close(fig)
    return True


def plot_alpha_sweep(records: list[dict], path: str) -> bool:
    """Triggered-validation ASR, clean-validation NLL and BLEU (last epoch) against alpha_base, CE drawn at
    alpha 1, mean over seeds. Returns False (and draws nothing) without matplotlib or a DeCE sweep."""
    plt = pyplot()
    if plt is None:
        return False
    keys = ("probe_triggered_asr", "probe_clean_nll", "probe_clean_bleu")
    points: dict[float, list[dict]] = {}
    for r in records:
        if r["loss"] not in ("dece", "ce") or not r.get("curves") or not all(k in r["curves"][-1] for k in keys):
            continue
        points.setdefault(1.0 if r["loss"] == "ce" else r["alpha_base"], []).append(r["curves"][-1])
    if len(points) < 2:
        return False
    alphas = sorted(points)
    mean = {k: [statistics.fmean(p[k] for p in points[a]) for a in alphas] for k in keys}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(alphas, [100 * v for v in mean["probe_triggered_asr"]], "o-", color="tab:red", clip_on=False)
    left.set(title="attack success (triggered validation)", xlabel="alpha_base (1.0 = CE)", ylabel="ASR %")
    left.set_ylim(0, 105)
    right.plot(alphas, mean["probe_clean_nll"], "s-", color="tab:blue", label="NLL (lower is better)")
    right.set(title="clean quality (validation)", xlabel="alpha_base (1.0 = CE)", ylabel="target NLL (nats)")
    twin = right.twinx()
    twin.plot(alphas, mean["probe_clean_bleu"], "^--", color="tab:green", label="BLEU")
    twin.set_ylabel("BLEU", color="tab:green")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True
