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
