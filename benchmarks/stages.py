"""One stage of the benchmark: every system at one batch size, warmed up, then timed in
interleaved rounds."""

from __future__ import annotations

import statistics
import time

from processes import Proc, load_average, log
from summary import summarise




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
