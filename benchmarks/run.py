"""RetinaNet side by side with keras-cv and keras-hub, interleaved, on this machine.

    python benchmarks/run.py --quick     # batch 2, up to 3 rounds, under 10 minutes
    python benchmarks/run.py             # full: batch 2 and 8, 5 rounds, profile
    python benchmarks/run.py --gpu       # accelerator: mixed precision + XLA, 640 px, batch 16

Workload: RetinaNet, ResNet50-shaped backbone, random weights, 20 classes, 512x512 images
(see benchmarks/systems.py for how each system is built without downloading anything).

Method: every system runs in its own subprocess (so peak RSS is per system), next to one
for the machine's matmul/conv peak and one for the input pipeline. After each process has
built its model and warmed up every phase (the first call traces and compiles; its time is
reported separately), the controller runs rounds; in each round every phase is timed on
every system in turn (ours, keras-cv, keras-hub, rotating the start each round), one process
working at a time. Figures are medians over rounds; ratios ours/peer are medians of the
per-round ratios, which cancel most of the drift in machine load.

Phases:
  forward              model(images, training=False) in a compiled tf.function
  predict:default      model.predict (decoding + NMS), each system's own score threshold
  predict:low          model.predict with score threshold 0.001 (every candidate goes to NMS)
                       (predict and train: per-batch times inside one call of N + 1 batches,
                       leaving out the first; see systems.batch_times)
  decode:trained-like  each system's decoding + NMS alone, on the same synthetic head outputs
                       shaped like a trained detector's (clusters of confident anchors)
  train                the model's own fit (its train_step and loss) on synthetic boxes
  postprocess:*        ours only: model.detect on precomputed head outputs (the decoding/NMS
                       share of predict, issue 3's < 25 % of forward)

Writes runs/bench/results.json (and per-process logs in runs/bench/logs/).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import worker  # noqa: E402  (stdlib-only at import; TensorFlow loads in the subprocesses)

SYSTEMS = ("ours", "keras-cv", "keras-hub")
MODEL_PHASES = ("forward", "predict:default", "predict:low", "decode:trained-like", "train",
                "postprocess:default", "postprocess:low")
TARGETS = {
    "predict_vs_peer": 8.0,
    "train_vs_keras_cv": 1.4,
    "forward_fraction_of_conv_peak": 0.70,
    "pipeline_vs_train": 4.0,
    "postprocess_fraction_of_forward": 0.25,
}


# ----------------------------------------------------------------------------- settings


def settings(args):
    """The run's configuration from the command line."""
    if args.gpu:
        cfg = dict(mode="gpu", image_size=640, batch_sizes=[16], rounds=5, jit_compile=True,
                   steps={"forward": 10, "predict": 5, "decode": 5, "train": 10,
                          "postprocess": 10, "pipeline": 12},
                   warmup={"forward": 3, "predict": 2, "decode": 2, "train": 3,
                           "postprocess": 3},
                   budget_s=None, pipeline_images=192, profile=False)
    elif args.quick:
        cfg = dict(mode="quick", image_size=512, batch_sizes=[2], rounds=3, jit_compile=False,
                   steps={"forward": 1, "predict": 1, "decode": 1, "train": 1,
                          "postprocess": 2, "pipeline": 6},
                   warmup={"forward": 2, "predict": 1, "decode": 1, "train": 1,
                           "postprocess": 2},
                   budget_s=540, pipeline_images=64, profile=False)
    else:
        cfg = dict(mode="full", image_size=512, batch_sizes=[2, 8], rounds=5, jit_compile=False,
                   steps={"forward": 2, "predict": 1, "decode": 1, "train": 2,
                          "postprocess": 3, "pipeline": 12},
                   warmup={"forward": 2, "predict": 2, "decode": 2, "train": 2,
                           "postprocess": 3},
                   # Batch 8 costs 4x per step: fewer rounds and single steps there.
                   large_batch={"rounds": 3, "steps": {"forward": 1, "predict": 1, "decode": 1,
                                                       "train": 1, "postprocess": 2,
                                                       "pipeline": 6}},
                   budget_s=None, pipeline_images=192, profile=True)
    cfg["gpu"] = bool(args.gpu)
    if args.image_size:
        cfg["image_size"] = args.image_size
    if args.batch_size:
        cfg["batch_sizes"] = args.batch_size
    if args.rounds:
        cfg["rounds"] = args.rounds
        cfg["rounds_set"] = True
    if args.budget is not None:
        cfg["budget_s"] = args.budget or None
    if args.profile is not None:
        cfg["profile"] = args.profile
    cfg["systems"] = args.systems or list(SYSTEMS)
    cfg["phases"] = list(MODEL_PHASES)
    cfg["low_threshold"] = worker.LOW_THRESHOLD
    return cfg


# ----------------------------------------------------------------------------- processes


class Proc:
    """One worker subprocess and its pipe."""

    def __init__(self, role, cfg, log_path):
        ctx = mp.get_context("spawn")
        self.role = role
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker.main, args=(child, role, cfg, str(log_path)),
                                   daemon=True, name=f"bench-{role}")
        self.process.start()
        self.log_path = log_path
        self.info = None
        self.error = None

    def _receive(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(1.0):
                return self.conn.recv()
            if not self.process.is_alive():
                return {"ok": False, "error": f"process exited with code "
                                              f"{self.process.exitcode} (see {self.log_path})"}
        return {"ok": False, "error": f"no answer within {timeout:.0f} s"}

    def wait_ready(self, timeout=3600):
        reply = self._receive(timeout)
        if reply["ok"]:
            self.info = reply["result"]
        else:
            self.error = reply["error"]
        return self.ok

    @property
    def ok(self):
        return self.error is None

    def ask(self, cmd, timeout=1800, **args):
        if not self.ok:
            return None
        self.conn.send({"cmd": cmd, "args": args})
        reply = self._receive(timeout)
        if not reply["ok"]:
            self.error = reply["error"]
            return None
        return reply["result"]

    def stop(self):
        try:
            self.conn.send({"cmd": "stop"})
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


def log(message):
    print(message, flush=True)


# ----------------------------------------------------------------------------- machine


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
        flags = open("/proc/cpuinfo").read()
        info["avx512"] = "avx512f" in flags
        info["amx"] = "amx_tile" in flags
    except OSError:
        info["cpu"] = platform.processor()
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        info["memory_gb"] = round(int(meminfo["MemTotal"].split()[0]) / 2**20, 1)
    except (OSError, KeyError, ValueError):
        pass
    return info


def available_memory_gb():
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        return int(meminfo["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return float("inf")


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- one stage


def phase_steps(cfg, phase):
    return cfg["steps"][phase.split(":")[0]]


def run_stage(cfg, batch, peak, pipeline_proc, logdir, started, profile_dir):
    """All systems at one batch size: set up, warm up, interleaved rounds."""
    stage = {"batch_size": batch, "load_average_start": load_average(), "notes": []}
    if batch > 2 and cfg.get("large_batch") and not (cfg.get("rounds_set") or cfg["gpu"]):
        cfg = dict(cfg, rounds=cfg["large_batch"]["rounds"], steps=cfg["large_batch"]["steps"])
    stage["rounds_planned"] = cfg["rounds"]
    stage["steps"] = cfg["steps"]
    stage_cfg = dict(cfg, batch_size=batch)
    # Setting up in parallel overlaps the single-threaded tracing; at large batches, one at a
    # time so that three warm-up training steps do not hold their activations at once.
    parallel = batch <= 2 or cfg["gpu"]
    procs = {}
    log(f"\n== batch {batch}: building and warming up {', '.join(cfg['systems'])} "
        f"({'in parallel' if parallel else 'one at a time'}) ...")
    for name in cfg["systems"]:
        procs[name] = Proc(name, stage_cfg, logdir / f"{name}-b{batch}.log")
        if not parallel:
            procs[name].wait_ready()
            log(_ready_line(procs[name], started))
    if parallel:
        for proc in procs.values():
            proc.wait_ready()
            log(_ready_line(proc, started))
    stage["setup"] = {name: proc.info for name, proc in procs.items() if proc.ok}
    stage["errors"] = {name: proc.error for name, proc in procs.items() if not proc.ok}

    samples = {name: {phase: [] for phase in cfg["phases"]} for name in cfg["systems"]}
    cpu_samples = {name: {phase: [] for phase in cfg["phases"]} for name in cfg["systems"]}
    peaks, pipes, pipe_cpu = [], {}, {}
    order = list(cfg["systems"])
    rounds_done = 0
    for round_index in range(cfg["rounds"]):
        round_start = time.monotonic()
        rotated = order[round_index % len(order):] + order[:round_index % len(order)]
        for phase in cfg["phases"]:
            for name in rotated:
                proc = procs[name]
                if not proc.ok or phase not in proc.info.get("first_call_s", {}):
                    continue
                times = proc.ask("time", phase=phase, steps=phase_steps(cfg, phase))
                if times is None:
                    log(f"   {name} failed in {phase}; see {proc.log_path}")
                    stage["errors"][name] = proc.error
                    continue
                samples[name][phase].append(statistics.median(times["wall"]))
                cpu_samples[name][phase].append(statistics.median(times["cpu"]))
            if phase == "forward" and peak is not None and peak.ok:
                result = peak.ask("time", phase="peak", steps=1)
                if result:
                    peaks.append(result)
        if pipeline_proc is not None and pipeline_proc.ok:
            for dataset in pipeline_proc.info["datasets"]:
                result = pipeline_proc.ask("time", phase=f"pipeline:{dataset}",
                                           steps=cfg["steps"]["pipeline"], batch_size=batch)
                if result:
                    pipes.setdefault(dataset, []).append(result["images_per_s"])
                    pipe_cpu.setdefault(dataset, []).append(result["cpu_s_per_image"])
        rounds_done += 1
        round_s = time.monotonic() - round_start
        elapsed = time.monotonic() - started
        log(f"   round {rounds_done}/{cfg['rounds']} took {round_s:.0f} s "
            f"(elapsed {elapsed:.0f} s, load {load_average()[0]})")
        if (cfg["budget_s"] and round_index + 1 < cfg["rounds"]
                and elapsed + round_s > cfg["budget_s"]):
            stage["notes"].append(
                f"stopped after {rounds_done} of {cfg['rounds']} rounds: another round "
                f"(~{round_s:.0f} s) would pass the {cfg['budget_s']} s budget")
            log("   " + stage["notes"][-1])
            break
    stage["rounds"] = rounds_done

    if profile_dir is not None:
        log("   profiling (op types and model parts) ...")
        stage["profile"] = {}
        jobs = [(name, "forward", 1) for name in cfg["systems"]]
        jobs += [("ours", "predict:trained-like", 1), ("ours", "train", 1)]
        jobs += [(name, "train", 1) for name in cfg["systems"] if name != "ours"]
        for name, phase, steps in jobs:
            proc = procs.get(name)
            if proc is None or not proc.ok:
                continue
            run_phase = "decode:trained-like" if phase == "predict:trained-like" else phase
            result = proc.ask("profile", phase=run_phase, steps=steps,
                              logdir=str(profile_dir / f"{name}-{run_phase.replace(':', '-')}"
                                                       f"-b{batch}"))
            if result:
                stage["profile"][f"{name} {run_phase}"] = result

    for name, proc in procs.items():
        memory = proc.ask("memory") if proc.ok else None
        if memory:
            stage["setup"][name]["memory"] = memory
        proc.stop()
    stage["samples"] = samples
    stage["cpu_samples"] = cpu_samples
    stage["peak_samples"] = peaks
    stage["pipeline_samples"] = pipes
    stage["pipeline_cpu_samples"] = pipe_cpu
    stage["load_average_end"] = load_average()
    stage["summary"] = summarise(stage, cfg, batch)
    return stage


def _ready_line(proc, started):
    elapsed = time.monotonic() - started
    if not proc.ok:
        last = proc.error.strip().splitlines()[-1] if proc.error else "?"
        return f"   {proc.role}: FAILED ({last}); log {proc.log_path}"
    info = proc.info
    first = info.get("first_call_s", {})
    return (f"   {proc.role}: ready at {elapsed:.0f} s (build {info['build_s']:.0f} s, first "
            f"train step {first.get('train', float('nan')):.0f} s, "
            f"{info.get('gflops_per_image', float('nan')):.1f} GFLOPs/image)")


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
    summary["targets"] = targets(summary)
    return summary


def targets(summary):
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
    if "keras-cv" in summary["ratios"] and "train" in summary["ratios"]["keras-cv"]:
        add("train >= 1.4x keras-cv", summary["ratios"]["keras-cv"]["train"],
            TARGETS["train_vs_keras_cv"],
            cpu_value=cpu_ratios.get("keras-cv", {}).get("train"))
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


# ----------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="batch 2 only, 1 step per phase per round, at most 3 rounds within "
                             "a 540 s budget (under 10 minutes)")
    parser.add_argument("--gpu", action="store_true",
                        help="accelerator mode: mixed_float16 + XLA, 640x640, batch 16")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="with --gpu: run the GPU mode's code path on CPU (a smoke test)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, help="subset of systems")
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--budget", type=float, help="seconds; 0 turns the budget off")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="op-type profile of ours (default: on in the full run)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "results.json"))
    args = parser.parse_args(argv)
    if args.allow_cpu and not args.gpu:
        parser.error("--allow-cpu only applies with --gpu")

    cfg = settings(args)
    if cfg["gpu"]:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus and not args.allow_cpu:
            log("--gpu: TensorFlow sees no GPU on this machine, so nothing was run. "
                "Run it where `tf.config.list_physical_devices('GPU')` is not empty "
                "(or add --allow-cpu, with a small --image-size, to smoke-test the code path).")
            return 2
        cfg["gpu_devices"] = [gpu.name for gpu in gpus]

    out = pathlib.Path(args.out)
    logdir = out.parent / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    profile_dir = out.parent / "profile" if cfg["profile"] else None
    started = time.monotonic()
    results = {"config": cfg, "machine": machine_info(), "load_average_start": load_average(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
               "stages": []}
    log(f"{results['machine'].get('cpu')}, {results['machine']['cores']} cores; load average "
        f"{results['load_average_start']}; mode {cfg['mode']}; logs in {logdir}")

    peak = Proc("peak", dict(cfg, batch_size=0), logdir / "peak.log")
    pipeline_proc = Proc("pipeline", dict(cfg, batch_size=cfg["batch_sizes"][0]),
                         logdir / "pipeline.log")
    peak.wait_ready()
    pipeline_proc.wait_ready()
    for proc in (peak, pipeline_proc):
        if not proc.ok:
            log(f"{proc.role}: FAILED: {proc.error}")
    try:
        for batch in cfg["batch_sizes"]:
            if batch > 2 and not cfg["gpu"]:
                free = available_memory_gb()
                # Measured: ~2.5 GiB peak per system at batch 2, mostly activations.
                need = 1.5 + 1.2 * batch
                if free < need:
                    note = (f"batch {batch} skipped: {free:.1f} GiB available, about "
                            f"{need:.1f} GiB needed per warm-up")
                    log(note)
                    results["stages"].append({"batch_size": batch, "skipped": note})
                    continue
            if cfg["budget_s"] and time.monotonic() - started > cfg["budget_s"]:
                results["stages"].append({"batch_size": batch, "skipped": "over budget"})
                continue
            stage = run_stage(cfg, batch, peak, pipeline_proc, logdir, started, profile_dir)
            results["stages"].append(stage)
            print_stage(stage)
    finally:
        results["peak_setup"] = peak.info
        results["pipeline_setup"] = pipeline_proc.info
        for proc in (peak, pipeline_proc):
            proc.stop()
        results["load_average_end"] = load_average()
        results["wall_s"] = time.monotonic() - started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))
    log(f"\nwall time {results['wall_s']:.0f} s; load average at the end "
        f"{results['load_average_end']}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
