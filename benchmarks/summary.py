"""The benchmark's figures: medians and paired ratios over rounds, the targets, the printout."""

from __future__ import annotations

import statistics

from processes import log

TARGETS = {
    "predict_vs_peer": 8.0,
    # Issue 30: train by CPU time at equal work (both peers) and with the fine-tuning
    # defaults (keras-cv); peak RSS at equal work without recomputation.
    "train_vs_peer_equal_work": 1.3,
    "train_vs_keras_cv_fine_tuning": 1.6,
    "peak_rss_vs_keras_cv": 0.9,
    "forward_fraction_of_conv_peak": 0.70,
    "pipeline_vs_train": 4.0,
    "postprocess_fraction_of_forward": 0.25,
}




# ----------------------------------------------------------------------------- summary


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _paired(a, b, fn):
    """Median over rounds of fn(a[r], b[r]) for the rounds both have."""
    return _median([fn(x, y) for x, y in zip(a, b)])


def summarise(stage, cfg, batch):
    samples = stage["samples"]
    setup = stage["setup"]
    summary = {"systems": {}, "ratios": {}, "ours": {}, "targets": []}
    conv_peaks = [p["conv_gflops"] for p in stage["peak_samples"]]
    matmul_peaks = [p["matmul_gflops"] for p in stage["peak_samples"]]
    summary["conv_peak_gflops"] = _median(conv_peaks)
    summary["matmul_peak_gflops"] = _median(matmul_peaks)
    cpu = stage["cpu_samples"]
    conv_cpu_peaks = [p["conv_gflops_per_cpu_s"] for p in stage["peak_samples"]]
    summary["conv_peak_gflops_per_cpu_s"] = _median(conv_cpu_peaks)
    summary["matmul_peak_gflops_per_cpu_s"] = _median(
        [p["matmul_gflops_per_cpu_s"] for p in stage["peak_samples"]])
    for name, phases in samples.items():
        if name not in setup:
            continue
        row = {}
        gflops = setup[name].get("gflops_per_image")
        for phase, values in phases.items():
            if values:
                row[phase] = {"median_s": _median(values), "images_per_s": batch / _median(values),
                              "samples_s": values,
                              "cpu_median_s": _median(cpu[name][phase]),
                              "cpu_samples_s": cpu[name][phase]}
        fwd = phases.get("forward", [])
        if gflops and fwd:
            row["forward_gflops_per_s"] = _median([gflops * batch / t for t in fwd])
            if conv_peaks:
                row["forward_fraction_of_conv_peak"] = _paired(
                    fwd, conv_peaks, lambda t, p: gflops * batch / t / p)
                row["forward_fraction_of_matmul_peak"] = _paired(
                    fwd, matmul_peaks, lambda t, p: gflops * batch / t / p)
        if gflops and cpu[name].get("forward") and conv_cpu_peaks:
            # Per CPU-second on both sides: robust to other processes' load.
            row["forward_fraction_of_conv_peak_cpu"] = _paired(
                cpu[name]["forward"], conv_cpu_peaks, lambda t, p: gflops * batch / t / p)
        if gflops and phases.get("train"):
            # Backward is about twice the forward's FLOPs (an estimate: frozen parts skip
            # their weight gradients).
            row["train_gflops_per_s_estimate"] = _median(
                [3 * gflops * batch / t for t in phases["train"]])
        # Predict as forward + decoding on trained-like outputs, per round.
        decode = phases.get("decode:trained-like", [])
        if fwd and decode:
            row["predict:trained-like"] = {
                "median_s": _paired(fwd, decode, lambda f, d: f + d)}
            row["predict:trained-like"]["images_per_s"] = \
                batch / row["predict:trained-like"]["median_s"]
        for phase in ("predict:default", "predict:low"):
            if fwd and phases.get(phase):
                row[f"{phase} overhead vs forward"] = _paired(
                    phases[phase], fwd, lambda p, f: (p - f) / f)
        if fwd and decode:
            row["decode:trained-like vs forward"] = _paired(decode, fwd, lambda d, f: d / f)
        row["peak_rss_mb"] = setup[name].get("memory", {}).get("peak_rss_mb")
        row["first_call_s"] = setup[name].get("first_call_s")
        row["params"] = setup[name].get("params")
        row["gflops_per_image"] = gflops
        summary["systems"][name] = row

    ours = samples.get("ours", {})
    # Ratios ours / peer (speed-ups: > 1 means ours is faster), per round, then the median.
    for peer in ("keras-cv", "keras-hub"):
        if peer not in setup or "ours" not in setup:
            continue
        ratios = {}
        for phase in ("forward", "predict:default", "predict:low", "decode:trained-like",
                      "train"):
            if ours.get(phase) and samples[peer].get(phase):
                ratios[phase] = _paired(samples[peer][phase], ours[phase], lambda p, o: p / o)
        if all(ours.get(p) and samples[peer].get(p) for p in ("forward", "decode:trained-like")):
            peer_total = [f + d for f, d in zip(samples[peer]["forward"],
                                                samples[peer]["decode:trained-like"])]
            ours_total = [f + d for f, d in zip(ours["forward"], ours["decode:trained-like"])]
            ratios["predict:trained-like"] = _paired(peer_total, ours_total, lambda p, o: p / o)
        summary["ratios"][peer] = ratios
        cpu_ratios = {}
        for phase in ("forward", "predict:default", "predict:low", "decode:trained-like",
                      "train"):
            if cpu["ours"].get(phase) and cpu[peer].get(phase):
                cpu_ratios[phase] = _paired(cpu[peer][phase], cpu["ours"][phase],
                                            lambda p, o: p / o)
        if all(cpu["ours"].get(p) and cpu[peer].get(p)
               for p in ("forward", "decode:trained-like")):
            cpu_ratios["predict:trained-like"] = _paired(
                [f + d for f, d in zip(cpu[peer]["forward"], cpu[peer]["decode:trained-like"])],
                [f + d for f, d in zip(cpu["ours"]["forward"], cpu["ours"]["decode:trained-like"])],
                lambda p, o: p / o)
        summary.setdefault("ratios_cpu", {})[peer] = cpu_ratios

    if ours.get("forward"):
        fwd = ours["forward"]
        for phase in ("postprocess:default", "postprocess:low", "decode:trained-like"):
            if ours.get(phase):
                summary["ours"][f"{phase} / forward"] = _paired(ours[phase], fwd,
                                                                lambda p, f: p / f)
                summary["ours"][f"{phase} / forward (CPU time)"] = _paired(
                    cpu["ours"][phase], cpu["ours"]["forward"], lambda p, f: p / f)
    if ours.get("train"):
        train_rates = [batch / t for t in ours["train"]]
        summary["ours"]["train_images_per_s"] = _median(train_rates)
        for dataset, rates in stage["pipeline_samples"].items():
            summary["ours"][f"pipeline:{dataset} images_per_s"] = _median(rates)
            summary["ours"][f"pipeline:{dataset} / train"] = _paired(rates, train_rates,
                                                                     lambda p, t: p / t)
        train_cpu_per_image = [t / batch for t in cpu["ours"]["train"]]
        for dataset, costs in stage["pipeline_cpu_samples"].items():
            summary["ours"][f"pipeline:{dataset} cpu_s_per_image"] = _median(costs)
            summary["ours"][f"pipeline:{dataset} / train (CPU time)"] = _paired(
                train_cpu_per_image, costs, lambda t, p: t / p)
    summary["targets"] = targets(summary, cfg)
    return summary


def targets(summary, cfg):
    """Each target with its wall-clock value and, where there is one, the CPU-time value."""
    rows = []

    def add(name, value, target, higher=True, cpu_value=None):
        met = None if value is None else bool(value >= target if higher else value < target)
        rows.append({"target": name, "value": value, "value_cpu": cpu_value, "goal": target,
                     "met": met})

    cpu_ratios = summary.get("ratios_cpu", {})
    for peer, ratios in summary["ratios"].items():
        for phase in ("predict:default", "predict:low", "predict:trained-like"):
            if phase in ratios:
                add(f"{phase} >= 8x {peer}", ratios[phase], TARGETS["predict_vs_peer"],
                    cpu_value=cpu_ratios.get(peer, {}).get(phase))
    equal_work = cfg.get("train_mode", "equal-work") == "equal-work"
    for peer, ratios in summary["ratios"].items():
        if "train" in ratios and (equal_work or peer == "keras-cv"):
            goal = TARGETS["train_vs_peer_equal_work" if equal_work
                           else "train_vs_keras_cv_fine_tuning"]
            add(f"train ({cfg.get('train_mode', 'equal-work')}) >= {goal}x {peer}",
                ratios["train"], goal, cpu_value=cpu_ratios.get(peer, {}).get("train"))
    rss = {name: row.get("peak_rss_mb") for name, row in summary["systems"].items()}
    if (equal_work and "train" in cfg.get("phases", ()) and rss.get("ours")
            and rss.get("keras-cv") and not cfg.get("ours_recompute_backbone")):
        add("peak RSS <= 0.9x keras-cv", rss["ours"] / rss["keras-cv"],
            TARGETS["peak_rss_vs_keras_cv"], higher=False)
    ours = summary["systems"].get("ours", {})
    if "forward_fraction_of_conv_peak" in ours:
        add("forward >= 70% of conv peak", ours["forward_fraction_of_conv_peak"],
            TARGETS["forward_fraction_of_conv_peak"],
            cpu_value=ours.get("forward_fraction_of_conv_peak_cpu"))
    for key, value in summary["ours"].items():
        if key.startswith("pipeline:") and key.endswith("/ train"):
            dataset = key.split(" ")[0]
            add(f"{dataset} >= 4x training consumption", value, TARGETS["pipeline_vs_train"],
                cpu_value=summary["ours"].get(f"{dataset} / train (CPU time)"))
    for phase in ("postprocess:default", "postprocess:low", "decode:trained-like"):
        key = f"{phase} / forward"
        if key in summary["ours"]:
            add(f"ours {phase} < 25% of forward", summary["ours"][key],
                TARGETS["postprocess_fraction_of_forward"], higher=False,
                cpu_value=summary["ours"].get(f"{phase} / forward (CPU time)"))
    return rows


# ----------------------------------------------------------------------------- report


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def print_stage(stage):
    batch = stage["batch_size"]
    summary = stage["summary"]
    log(f"\n=== batch {batch}, {stage['rounds']} round(s); load average "
        f"{stage['load_average_start']} -> {stage['load_average_end']}")
    for note in stage["notes"]:
        log(f"note: {note}")
    for name, error in stage["errors"].items():
        if error:
            log(f"{name}: FAILED: {error.strip().splitlines()[-1]}")
    for name, info in stage["setup"].items():
        for phase, error in (info.get("phase_errors") or {}).items():
            log(f"{name}: {phase} failed and was left out: {error.splitlines()[0][:300]}")
    columns = [("forward", "forward"), ("predict:default", "pred dflt"),
               ("predict:low", "pred low"), ("predict:trained-like", "pred trnd"),
               ("train", "train")]
    header = f"{'system':<10}{'params M':>9}{'GFLOP/img':>10}" + "".join(
        f"{label:>10}" for _, label in columns) + f"{'peak RSS':>10}{'1st train':>10}"
    log("images/s (medians over rounds); peak RSS in MiB; first train step in s")
    log(header)
    log("-" * len(header))
    for name, row in summary["systems"].items():
        line = f"{name:<10}{_fmt(row['params'] and row['params'] / 1e6, '.1f'):>9}"
        line += f"{_fmt(row['gflops_per_image'], '.1f'):>10}"
        for phase, _ in columns:
            line += f"{_fmt(row.get(phase, {}).get('images_per_s'), '.3f'):>10}"
        line += f"{_fmt(row['peak_rss_mb'], '.0f'):>10}"
        line += f"{_fmt((row['first_call_s'] or {}).get('train'), '.0f'):>10}"
        log(line)
    log(f"\npredict latency per batch of {batch} (s, median): " + "; ".join(
        f"{name} " + ", ".join(
            f"{phase.split(':')[1]} {_fmt(row.get(phase, {}).get('median_s'), '.3f')}"
            for phase in ("predict:default", "predict:low", "predict:trained-like"))
        for name, row in summary["systems"].items()))
    log(f"measured peak: conv {_fmt(summary['conv_peak_gflops'], '.1f')} GFLOP/s, "
        f"matmul {_fmt(summary['matmul_peak_gflops'], '.1f')} GFLOP/s (float32)")
    for name, row in summary["systems"].items():
        if "forward_gflops_per_s" in row:
            log(f"{name:<10} forward {row['forward_gflops_per_s']:.1f} GFLOP/s = "
                f"{_fmt(row.get('forward_fraction_of_conv_peak'), '.0%')} of conv peak; "
                f"train ~{_fmt(row.get('train_gflops_per_s_estimate'), '.1f')} GFLOP/s; "
                f"predict overhead vs forward: default "
                f"{_fmt(row.get('predict:default overhead vs forward'), '.0%')}, low "
                f"{_fmt(row.get('predict:low overhead vs forward'), '.0%')}, decode "
                f"trained-like {_fmt(row.get('decode:trained-like vs forward'), '.0%')}")
    for name, row in summary["systems"].items():
        if "forward_fraction_of_conv_peak_cpu" in row:
            log(f"{name:<10} forward per CPU-second = "
                f"{row['forward_fraction_of_conv_peak_cpu']:.0%} of the conv peak per "
                f"CPU-second ({_fmt(summary['conv_peak_gflops_per_cpu_s'], '.1f')} GFLOP/CPU-s)")
    log("\nspeed-up ours / peer (median of per-round ratios)")
    phases = ("forward", "predict:default", "predict:low", "predict:trained-like",
              "decode:trained-like", "train")
    log(f"{'peer':<10}" + "".join(f"{p.replace('predict:', 'pred ')[:14]:>15}" for p in phases))
    for peer, ratios in summary["ratios"].items():
        log(f"{peer:<10}" + "".join(f"{_fmt(ratios.get(p), '.2f') + 'x':>15}" for p in phases))
    if summary.get("ratios_cpu"):
        log("same, by CPU time (robust to other processes' load)")
        for peer, ratios in summary["ratios_cpu"].items():
            log(f"{peer:<10}" + "".join(f"{_fmt(ratios.get(p), '.2f') + 'x':>15}"
                                        for p in phases))
    if summary["ours"]:
        log("\nours: " + ", ".join(f"{k} = {_fmt(v, '.3f')}" for k, v in summary["ours"].items()))
    log("\ntargets")
    for row in summary["targets"]:
        status = "n/a" if row["met"] is None else ("MET" if row["met"] else "MISSED")
        log(f"  {row['target']:<46} {_fmt(row['value'], '.3f'):>9}  (CPU time "
            f"{_fmt(row['value_cpu'], '.3f')})  goal {row['goal']}  {status}")
    if stage.get("profile"):
        for phase, prof in stage["profile"].items():
            if not prof:
                continue
            log(f"\nprofile {phase}: {prof['wall_s']:.2f} s/step wall; by part: "
                + ", ".join(f"{k} {v:.2f}s" for k, v in prof["by_part"].items()))
            log("  by op type: " + ", ".join(
                f"{k} {v:.2f}s" for k, v in list(prof["by_type"].items())[:10]))
