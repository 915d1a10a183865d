"""RetinaNet object detection for TensorFlow and Keras 3.

The public names load lazily (a module `__getattr__`), so `import retinanet` and
`retinanet --help` do not import TensorFlow; `retinanet.RetinaNet` does. To load a `.keras`
file with `keras.saving.load_model`, import Keras before `retinanet`, or `retinanet.model`.
"""

import importlib
import importlib.metadata
import os
import sys

# Before TensorFlow's first import: hides its C++ INFO and WARNING lines unless the user set
# their own level (the command line then shows TensorFlow's start-up lines too).
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:  # one version: the installed distribution's (pyproject.toml)
    __version__ = importlib.metadata.version("retinanet")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

_LAZY = {
    "ATSSMatcher": ("retinanet.matching", "ATSSMatcher"),
    "AnchorGenerator": ("retinanet.anchors", "AnchorGenerator"),
    "BoxCoder": ("retinanet.box_coder", "BoxCoder"),
    "IoUMatcher": ("retinanet.matching", "IoUMatcher"),
    "DetectionPostprocessor": ("retinanet.model", "DetectionPostprocessor"),
    "LabelEncoder": ("retinanet.matching", "LabelEncoder"),
    "RetinaNet": ("retinanet.model", "RetinaNet"),
    "losses": ("retinanet.losses", None),
    "ops": ("retinanet.ops", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'retinanet' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# `keras.saving.load_model` finds this package's classes only once they are registered, which
# importing `retinanet.model` does. Where Keras (and so TensorFlow) is loaded already, that
# costs nothing, so `import keras, retinanet` then `load_model` works; `import retinanet.model`
# works in any order.
if "keras" in sys.modules:
    importlib.import_module("retinanet.model")
