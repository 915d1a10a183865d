"""The layers of docs/ARCHITECTURE.md, checked on the imports themselves (also those inside
functions): the core and the model never reach up into training or the apps."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "retinanet"
# package or module (relative to retinanet/) -> the packages it must not import
FORBIDDEN = {
    "model": ("retinanet.training", "retinanet.apps"),
    "ops": ("retinanet.model", "retinanet.training", "retinanet.apps", "retinanet.data"),
    "data": ("retinanet.model", "retinanet.training", "retinanet.apps"),
    "evaluation": ("retinanet.training", "retinanet.apps"),
    "export": ("retinanet.training", "retinanet.apps"),
    "config.py": ("retinanet.model", "retinanet.training", "retinanet.apps"),
    "schedules.py": ("retinanet.model", "retinanet.training", "retinanet.apps"),
    "box_coder.py": ("retinanet.model", "retinanet.training", "retinanet.apps", "retinanet.data"),
    "matching.py": ("retinanet.model", "retinanet.training", "retinanet.apps", "retinanet.data"),
}


def imported_modules(path):
    """Every module an import statement in `path` names, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from retinanet.training import schedules\n")
    assert "retinanet.training.schedules" in set(imported_modules(source))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_no_module_reaches_up_a_layer(part):
    root = PACKAGE / part
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    assert files
    breaks = [f"{path.relative_to(PACKAGE)} imports {name}"
              for path in files for name in imported_modules(path)
              if name.startswith(FORBIDDEN[part])]
    assert not breaks


def test_the_preset_converter_and_the_model_do_not_import_each_other():
    """A preset reaches the model through one entry point, `pretrained.load_pretrained`;
    the keras-hub converter builds on `torchvision_detector`, not on `RetinaNet` itself."""
    model = PACKAGE / "model"
    assert "retinanet.model.retinanet" not in set(imported_modules(model / "presets.py"))
    assert not [name for name in imported_modules(model / "retinanet.py")
                if name.startswith(("retinanet.model.presets", "retinanet.model.torchvision"))]
