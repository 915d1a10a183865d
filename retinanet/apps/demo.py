"""`make demo`: from nothing to a trained, evaluated, exported detector on the CPU.

Trains the `shapes` recipe (the built-in synthetic shapes set, no download) into
`runs/demo/`, evaluates it on the validation split (`metrics.json`, `report.md`,
`per_class.csv`, `pr_curves.png`), exports a SavedModel (`runs/demo/saved_model`),
checks that the SavedModel's detections agree with the Keras model's, draws a gallery of
detections on validation images (`runs/demo/detections.png`) and prints a summary.

    python -m retinanet.apps.demo [--workdir=runs/demo] [--config.train.epochs=...]

It finds its recipe through the installed package (`retinanet.configs`), so it runs the same
from a clone and from a wheel.

An interrupted demo resumes where it stopped when run again with the same config; with
another config it starts over.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from retinanet.config import resolve_config_file  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", resolve_config_file("shapes"),
                                "The demo's config: a recipe's path.", lock_config=True)
flags.DEFINE_string("workdir", os.path.join("runs", "demo"), "Output folder.")
flags.DEFINE_integer("gallery_size", 12, "Validation images in detections.png.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity: 1 progress bars, 2 one line per epoch.")


def _same_config(config, workdir: str) -> bool:
    from retinanet import atomic
    from retinanet import config as rconfig

    saved = atomic.read_json(os.path.join(workdir, "config.json"))
    return saved is None or not any(rconfig.changed_fields(saved, rconfig.to_dict(config)))


def _gallery(model, dataset, class_names, count: int, path: str):
    """Detections on the first `count` validation images, drawn with the ground truth."""
    import numpy as np

    from retinanet import visualization
    from retinanet.model.postprocess import unpad_detections

    examples = list(dataset.examples.take(count).as_numpy_iterator())
    images = np.stack([example["image"] for example in examples])
    detections = model.predict_on_batch(images)
    per_image = unpad_detections(detections)
    truth = [{"boxes": example["boxes"], "classes": example["classes"]} for example in examples]
    # 0.5 for the picture: lower scores are mostly the same shape under another class name
    # (NMS is per class), which the metrics count but a reader need not see.
    visualization.plot_gallery(list(images), per_image, path, class_names=class_names,
                               ground_truth=truth, score_threshold=0.5)
    return images, detections


def _check_export(export_dir: str, images, detections):
    """Runs the SavedModel on the gallery images; returns the largest box difference (px)."""
    import numpy as np
    import tensorflow as tf

    serving = tf.saved_model.load(export_dir).signatures["serving_default"]
    served = serving(images=tf.constant(images.astype(np.uint8)))
    count = int(np.sum(detections["num_detections"]))
    if count == 0:
        return 0.0
    mask = np.arange(detections["boxes"].shape[1])[None] < detections["num_detections"][:, None]
    return float(np.max(np.abs(served["boxes"].numpy()[mask] - detections["boxes"][mask])))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    start = time.time()
    logging.set_verbosity(logging.WARNING)  # not absl's INFO lines of SavedModel writing
    from retinanet import config as rconfig
    from retinanet.training import trainer

    config = FLAGS.config
    rconfig.validate(config)
    workdir = FLAGS.workdir
    if not _same_config(config, workdir):
        print(f"{workdir} holds a run of another config: starting over", flush=True)
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    print(f"== 1/4 Training {config.name} on the CPU into {workdir} (load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
    trained = trainer.train(config, workdir, verbose=FLAGS.verbose)
    train_done = time.time()

    print("== 2/4 Exporting a SavedModel", flush=True)
    from retinanet import export as rexport

    export_dir = os.path.join(workdir, "saved_model")
    if os.path.isdir(export_dir):
        shutil.rmtree(export_dir)
    rexport.export(trained["model"], export_dir, format="saved_model",
                   resize=rconfig.image_size(config))

    print("== 3/4 Drawing detections", flush=True)
    gallery = os.path.join(workdir, "detections.png")
    images, detections = _gallery(trained["model"], trained["val_dataset"],
                                  trained["class_names"], FLAGS.gallery_size, gallery)
    print("== 4/4 Checking the SavedModel against the Keras model", flush=True)
    difference = _check_export(export_dir, images, detections)

    coco = trained["results"]["coco"]
    voc = trained["results"]["voc"]
    elapsed = time.time() - start
    summary = {
        "AP": coco["AP"], "AP50": coco["AP50"], "AP75": coco["AP75"], "mAP_voc": voc["mAP"],
        "validation_images": len(trained["val_dataset"]),
        "train_seconds": round(train_done - start, 1),
        "total_seconds": round(elapsed, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "saved_model_max_box_difference_px": round(difference, 6),
    }
    from retinanet import atomic

    atomic.write_json(os.path.join(workdir, "summary.json"), summary)
    print(
        "\n== Demo summary\n"
        f"  shapes validation split ({summary['validation_images']} images): "
        f"COCO AP {coco['AP']:.3f}, AP50 {coco['AP50']:.3f}, AP75 {coco['AP75']:.3f}, "
        f"VOC mAP {voc['mAP']:.3f}\n"
        f"  time: {elapsed / 60:.1f} min in all, {summary['train_seconds'] / 60:.1f} min "
        f"training and evaluation (load average now {summary['load_average']})\n"
        f"  SavedModel: {export_dir} (boxes within {difference:.2g} px of the Keras model)\n"
        f"  files in {workdir}: metrics.json, report.md, per_class.csv, pr_curves.png, "
        "analysis.md (error breakdown), confusion_matrix.png, errors.png, detections.png, "
        "checkpoints/, logs/ (tensorboard --logdir "
        f"{os.path.join(workdir, 'logs')})",
        flush=True)


def run():
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
