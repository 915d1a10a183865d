"""Latency, throughput and accuracy of every runtime a RetinaNet ships to, side by side.

    python benchmarks/runtimes.py --quick                  # both models, 3 rounds, ~10 min
    python benchmarks/runtimes.py --demo-workdir=runs/demo --models demo
    python benchmarks/runtimes.py --models resnet50 --rounds 5

Models:
  demo      the `make demo` model (configs/shapes.py) from --demo-workdir, 128x128 inputs;
            each runtime's COCO AP on the workdir config's validation split is measured too
  resnet50  RetinaNet ResNet50 (random weights, 20 classes), 512x512 inputs

Runtimes (each in its own process; LiteRT with XNNPACK, its default delegate):
  keras              `model.predict_on_batch` of the `.keras` model
  saved_model        the SavedModel's `serving_default` (TensorFlow)
  litert-{f32,f16,int8}-t{1,2}   the `.tflite` float32 / float16 / int8 on 1 and 2 threads
  onnx-{f32,int8}    onnxruntime's CPU provider, float32 and static int8 (2 threads)

Method: the exports are written once into --cache (reused when present; their time is not
measured). After every process has loaded its model and warmed up, the run goes in rounds;
in each round every runtime in turn (the start rotating) times batch-1 calls, then calls at
each batch size it takes (LiteRT's input is batch 1, so its throughput is 1 / latency).
Latency is the median (and p90) of all batch-1 calls; images/s the median over rounds at
the best batch; the ratio to Keras is the median of per-round ratios of batch-1 medians,
which cancels most of the drift in the machine's load.

Writes runs/bench/runtimes.json (logs in runs/bench/logs/).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import statistics
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import run as peer_run  # noqa: E402  (stdlib-only at import)
import worker as peer_worker  # noqa: E402

RUNTIMES = ("keras", "saved_model", "litert-f32-t1", "litert-f32-t2", "litert-f16-t1",
            "litert-f16-t2", "litert-int8-t1", "litert-int8-t2", "onnx-f32", "onnx-int8")
FILES = {"keras": "model.keras", "saved_model": "saved_model", "litert-f32": "model.tflite",
         "litert-f16": "model_float16.tflite", "litert-int8": "model_int8.tflite",
         "onnx-f32": "model.onnx", "onnx-int8": "model_int8.onnx"}
MODELS = {"demo": {"size": 128, "batches": (1, 4, 16), "steps": 10, "calibration": 100},
          "resnet50": {"size": 512, "batches": (1, 2, 4), "steps": 3, "calibration": 16}}


def log(message):
    print(message, flush=True)


# ----------------------------------------------------------------------------- exports


def _demo_model(workdir):
    import keras

    import retinanet  # noqa: F401  (registers the custom objects)
    from retinanet.training import workdir as run_folder

    return keras.saving.load_model(run_folder.checkpoint_path(workdir, "best"))


def _demo_data(workdir, split, count=None):
    """The demo config's evaluation batches of `split` (the first `count` images)."""
    from retinanet import config as rconfig
    from retinanet.training import datasets

    config = rconfig.load_json(os.path.join(workdir, "config.json"))
    dataset = datasets.load_datasets(config, (split,))[split]
    batches = datasets.eval_pipeline(config, dataset)
    if count:
        batches = batches.take(-(-count // config.data.eval_batch_size))
    return config, dataset, batches


def prepare(name, cfg, cache):
    """Writes every form of model `name` into `cache` (skipping those present)."""
    import keras
    import numpy as np

    import retinanet
    from retinanet import export
    import systems

    spec = MODELS[name]
    size = spec["size"]
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / FILES["keras"]).exists():
        if name == "demo":
            model = _demo_model(cfg["demo_workdir"])
        else:
            keras.utils.set_random_seed(0)
            model = retinanet.RetinaNet(systems.NUM_CLASSES, backbone="resnet50")
            model(np.zeros((1, size, size, 3), "float32"))
        model.save(cache / FILES["keras"])
    model = keras.saving.load_model(cache / FILES["keras"])
    if name == "demo":
        calibration = _demo_data(cfg["demo_workdir"], "train", spec["calibration"])[2]
    else:
        calibration = systems.synthetic_batch(spec["calibration"], size, seed=7)[0]
    jobs = {
        "saved_model": lambda: export.export_saved_model(model, cache / FILES["saved_model"],
                                                         bytes_signature=False),
        "litert-f32": lambda: export.export_litert(model, cache / FILES["litert-f32"],
                                                   (size, size)),
        "litert-f16": lambda: export.export_litert(model, cache / FILES["litert-f16"],
                                                   (size, size), "float16"),
        "litert-int8": lambda: export.export_litert(model, cache / FILES["litert-int8"],
                                                    (size, size), "int8", calibration),
        "onnx-f32": lambda: export.export_onnx(model, cache / FILES["onnx-f32"]),
        "onnx-int8": lambda: export.export_onnx(model, cache / FILES["onnx-int8"],
                                                quantization="int8",
                                                representative_data=calibration),
    }
    times = {}
    for form, job in jobs.items():
        if (cache / FILES[form]).exists():
            continue
        start = time.perf_counter()
        job()
        times[form] = time.perf_counter() - start
        log(f"   {name}: wrote {FILES[form]} in {times[form]:.0f} s")
    return times


# ----------------------------------------------------------------------------- worker


class Runner:
    """One runtime of one model, in its own process."""

    def __init__(self, runtime, cfg):
        import numpy as np

        from retinanet.export import load_exported

        spec = MODELS[cfg["model"]]
        self.cfg = cfg
        cache = pathlib.Path(cfg["cache"])
        form = runtime.rsplit("-t", 1)[0] if runtime.startswith("litert") else runtime
        path = cache / FILES[form]
        start = time.perf_counter()
        if runtime == "keras":
            import keras

            import retinanet  # noqa: F401

            self.model = keras.saving.load_model(path)
            self.batches = spec["batches"]
        else:
            threads = int(runtime.rsplit("-t", 1)[1]) if runtime.startswith("litert") else 2
            self.model = load_exported(path, num_threads=threads)
            self.batches = (1,) if runtime.startswith("litert") else spec["batches"]
        rng = np.random.default_rng(0)
        size = spec["size"]
        self.images = rng.uniform(0, 255, (max(self.batches), size, size, 3)).round() \
            .astype("float32")
        self.info = {"runtime": runtime, "load_s": time.perf_counter() - start,
                     "file_mb": _size_mb(path), "batches": list(self.batches)}
        start = time.perf_counter()
        for batch in self.batches:  # warm-up: traces and allocates for every batch size
            self.model.predict_on_batch(self.images[:batch])
        self.info["warmup_s"] = time.perf_counter() - start
        if cfg["model"] == "demo" and cfg.get("accuracy", True):
            self.info.update(self.accuracy())

    def accuracy(self):
        from retinanet.evaluation import evaluate

        _, dataset, batches = _demo_data(self.cfg["demo_workdir"], "val")
        start = time.perf_counter()
        results = evaluate(self.model, batches, class_names=dataset.class_names, voc=False,
                           verbose=0)
        return {"AP": float(results["coco"]["AP"]), "AP50": float(results["coco"]["AP50"]),
                "val_images": len(dataset), "eval_s": time.perf_counter() - start}

    def time(self, steps):
        """{batch: [seconds per call]}: `steps` calls at batch 1, then each larger batch."""
        out = {}
        for batch in self.batches:
            calls = steps if batch == 1 else max(1, steps // batch)
            images = self.images[:batch]
            out[batch] = []
            for _ in range(calls):
                start = time.perf_counter()
                self.model.predict_on_batch(images)  # all return numpy: synchronous
                out[batch].append(time.perf_counter() - start)
        return out

    def memory(self):
        import measure

        return {"peak_rss_mb": measure.peak_rss_mb()}


def _size_mb(path):
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20


def serve(conn, role, cfg, log_path):
    """Process entry point: prepare the exports, or load one runtime and serve commands."""
    peer_worker.redirect_output(log_path)
    try:
        if role == "prepare":
            conn.send({"ok": True, "result": prepare(cfg["model"], cfg,
                                                     pathlib.Path(cfg["cache"]))})
            return
        impl = Runner(role, cfg)
        conn.send({"ok": True, "result": impl.info})
    except BaseException:  # noqa: BLE001 - the controller reports it and goes on
        traceback.print_exc()
        conn.send({"ok": False, "error": traceback.format_exc()})
        return
    peer_worker.serve_commands(conn, impl)


class Proc(peer_run.Proc):
    """run.py's worker process and pipe, serving `serve` instead of the peer worker."""

    def __init__(self, role, cfg, log_path):  # noqa: D107 - same fields as run.Proc
        ctx = mp.get_context("spawn")
        self.role = role
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, role, cfg, str(log_path)),
                                   daemon=True, name=f"bench-{role}")
        self.process.start()
        self.log_path = log_path
        self.info = None
        self.error = None


# ----------------------------------------------------------------------------- controller


def _p90(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]


def measure_model(name, cfg, logdir, started):
    spec = MODELS[name]
    model_cfg = dict(cfg, model=name, cache=str(pathlib.Path(cfg["cache"]) / name))
    log(f"\n== {name} ({spec['size']} px): exports in {model_cfg['cache']}")
    prep = Proc("prepare", model_cfg, logdir / f"prepare-{name}.log")
    if not prep.wait_ready():
        log(f"   prepare FAILED: {prep.error.strip().splitlines()[-1]} (see {prep.log_path})")
        return {"model": name, "error": prep.error}
    prep.stop()
    procs = {}
    for runtime in cfg["runtimes"]:  # loading one at a time keeps peak memory down
        procs[runtime] = Proc(runtime, model_cfg, logdir / f"{name}-{runtime}.log")
        procs[runtime].wait_ready()
        status = "ready" if procs[runtime].ok else \
            f"FAILED ({procs[runtime].error.strip().splitlines()[-1]})"
        log(f"   {runtime}: {status} ({time.monotonic() - started:.0f} s)")
    live = [runtime for runtime, proc in procs.items() if proc.ok]
    samples = {runtime: {} for runtime in live}
    result = {"model": name, "size": spec["size"], "load_average_start": peer_run.load_average()}
    for round_index in range(cfg["rounds"]):
        round_start = time.monotonic()
        order = live[round_index % len(live):] + live[:round_index % len(live)]
        for runtime in order:
            times = procs[runtime].ask("time", steps=spec["steps"])
            for batch, values in (times or {}).items():
                samples[runtime].setdefault(int(batch), []).append(values)
        round_s = time.monotonic() - round_start
        log(f"   round {round_index + 1}/{cfg['rounds']} took {round_s:.0f} s "
            f"(load {peer_run.load_average()[0]})")
        if cfg["budget_s"] and time.monotonic() - started + round_s > cfg["budget_s"]:
            result["note"] = f"stopped after {round_index + 1} rounds (budget)"
            break
    rows = {}
    keras_latency = [statistics.median(v) for v in samples.get("keras", {}).get(1, [])]
    for runtime in live:
        by_batch = samples[runtime]
        batch1 = [t for round_times in by_batch.get(1, []) for t in round_times]
        rates = {batch: statistics.median(batch / statistics.median(v) for v in rounds)
                 for batch, rounds in by_batch.items()}
        best = max(rates, key=rates.get)
        per_round = [statistics.median(v) for v in by_batch.get(1, [])]
        row = {"latency_median_s": statistics.median(batch1), "latency_p90_s": _p90(batch1),
               "best_batch": best, "images_per_s": rates[best], "images_per_s_by_batch": rates,
               "file_mb": procs[runtime].info["file_mb"], "AP": procs[runtime].info.get("AP"),
               "AP50": procs[runtime].info.get("AP50")}
        if keras_latency and len(keras_latency) == len(per_round):
            row["latency_vs_keras"] = statistics.median(
                r / k for r, k in zip(per_round, keras_latency))
        memory = procs[runtime].ask("memory")
        row["peak_rss_mb"] = memory and memory["peak_rss_mb"]
        rows[runtime] = row
    for proc in procs.values():
        proc.stop()
    result.update(rows=rows, errors={r: p.error for r, p in procs.items() if not p.ok},
                  load_average_end=peer_run.load_average())
    return result


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(result):
    if "rows" not in result:
        return
    log(f"\n{result['model']} at {result['size']} px; load average "
        f"{result['load_average_start']} -> {result['load_average_end']}")
    log("| runtime | batch-1 latency median (p90) | vs Keras | best batch | images/s | "
        "file | COCO AP |")
    log("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for runtime, row in result["rows"].items():
        log(f"| {runtime} | {row['latency_median_s'] * 1e3:.1f} ms "
            f"({row['latency_p90_s'] * 1e3:.1f}) | {_fmt(row.get('latency_vs_keras'), '.2f')}x "
            f"| {row['best_batch']} | {row['images_per_s']:.1f} | {row['file_mb']:.1f} MB | "
            f"{_fmt(row['AP'], '.4f')} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="3 rounds within a 540 s budget")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--demo-workdir", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--no-accuracy", action="store_true", help="skip the demo's AP")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "bench" / "runtimes"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "runtimes.json"))
    args = parser.parse_args(argv)
    cfg = {"rounds": args.rounds or (3 if args.quick else 5), "runtimes": args.runtimes,
           "budget_s": 540 if args.quick else None, "cache": args.cache,
           "demo_workdir": args.demo_workdir, "accuracy": not args.no_accuracy}
    if "demo" in args.models and not os.path.isdir(os.path.join(args.demo_workdir,
                                                                "checkpoints")):
        parser.error(f"--demo-workdir={args.demo_workdir}: no trained demo model there "
                     "(run `make demo`, or pass --models resnet50)")
    out = pathlib.Path(args.out)
    logdir = out.parent / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {"machine": peer_run.machine_info(), "command": " ".join(sys.argv),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "config": cfg, "models": []}
    log(f"{results['machine'].get('cpu')}, {results['machine']['cores']} cores; load average "
        f"{peer_run.load_average()}")
    for name in args.models:
        results["models"].append(measure_model(name, cfg, logdir, started))
        print_table(results["models"][-1])
    results["wall_s"] = time.monotonic() - started
    out.write_text(json.dumps(results, indent=2, default=str))
    log(f"\nwall time {results['wall_s']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
