"""Loading is safe: `.keras` files load in Keras's safe mode, and nothing unpickles or evals."""

import ast
import json
import pathlib
import zipfile

import keras
import pytest

import retinanet
from conftest import make_squares

PACKAGE = pathlib.Path(retinanet.__file__).parent
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
UNSAFE_BUILTINS = {"eval", "exec", "__import__"}
# Keyword arguments that must keep their safe value wherever they are passed.
SAFE_KEYWORDS = {"allow_pickle": False, "safe_mode": True}


def _unsafe_uses(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    yield f"{path.name}:{node.lineno} imports {name}"
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                yield f"{path.name}:{node.lineno} calls {func.id}()"
            if isinstance(func, ast.Attribute) and func.attr in ("load", "unsafe_load") and \
                    getattr(func.value, "id", None) == "yaml":
                yield f"{path.name}:{node.lineno} calls yaml.{func.attr}()"
            for keyword in node.keywords:
                if keyword.arg in SAFE_KEYWORDS and \
                        getattr(keyword.value, "value", None) is not SAFE_KEYWORDS[keyword.arg]:
                    yield (f"{path.name}:{node.lineno} passes "
                           f"{keyword.arg}={ast.unparse(keyword.value)}")


def test_the_checker_finds_unsafe_code(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nx = eval('1')\n"
                   "np.load('a.npy', allow_pickle=True)\nyaml.load(text)\n"
                   "keras.saving.load_model('m.keras', safe_mode=False)\n")
    assert [use.split(" ", 1)[1] for use in _unsafe_uses(bad)] == [
        "imports pickle", "calls eval()", "passes allow_pickle=True", "calls yaml.load()",
        "passes safe_mode=False"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_the_package_never_unpickles_or_evaluates(path):
    assert list(_unsafe_uses(path)) == []


def test_a_keras_file_loads_in_safe_mode_and_holds_no_code(tiny_retinanet, tmp_path):
    model = tiny_retinanet()
    model.compile()
    images, boxes, classes = make_squares(num_images=2)
    model.fit(images, {"boxes": boxes, "classes": classes}, verbose=0)  # a real checkpoint
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config_text = archive.read("config.json").decode()
    # Lambda layers and serialized functions are what safe mode refuses: there are none.
    assert "Lambda" not in config_text and "__lambda__" not in config_text
    json.loads(config_text)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, retinanet.RetinaNet)


def _file_thief(directory, secret, stolen):
    """A SavedModel whose serving signature copies `secret` to `stolen` when called."""
    import tensorflow as tf

    class Thief(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def serve(self, images):
            tf.io.write_file(stolen, tf.io.read_file(secret))
            batch = tf.shape(images)[0]
            return {"boxes": tf.zeros([batch, 1, 4]), "scores": tf.zeros([batch, 1]),
                    "classes": tf.zeros([batch, 1], tf.int32),
                    "num_detections": tf.zeros([batch], tf.int32)}

    thief = Thief()
    tf.saved_model.save(thief, str(directory), signatures={"serving_default": thief.serve})


def test_a_saved_model_that_reads_and_writes_files_is_refused_before_it_runs(tmp_path):
    import numpy as np

    from retinanet.export.runtime import load_exported

    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("private")
    _file_thief(tmp_path / "thief", str(secret), str(stolen))
    with pytest.raises(ValueError, match=r"refusing to run this SavedModel: .*ReadFile "
                                         r"\(in function .*WriteFile .*--trust_checkpoint"):
        load_exported(tmp_path / "thief")
    assert not stolen.exists()
    # The check is what stands in the way: trusted, the graph does what it holds.
    load_exported(tmp_path / "thief", trust=True).predict_on_batch(
        np.zeros((1, 8, 8, 3), np.uint8))
    assert stolen.read_text() == "private"


@pytest.mark.parametrize("resize", [None, 128])
def test_the_packages_own_saved_models_pass_the_allow_list(tiny_retinanet, tmp_path, resize):
    from retinanet import export
    from retinanet.export.trust import untrusted_ops

    export.export(tiny_retinanet(), str(tmp_path / "model"), format="saved_model", resize=resize)
    assert untrusted_ops(tmp_path / "model") == []
