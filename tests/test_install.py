"""The package as a user installs it: a wheel, not the clone.

The wheel is built from a copy of the source tree (no stale build/ folder can leak into it),
installed with `--no-deps` into a temporary target, and used from a directory outside the
repository, where only the installed files can answer.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = {"custom", "finetune_coco", "retinanet_r50_coco", "retinanet_r50_voc", "scratch_cpu",
           "shapes", "tiny"}
NOT_SHIPPED = ("tests/", "runs/", "notebooks/", "benchmarks/", ".ipynb")



@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel path, install target, a working directory outside the repository)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis"))
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--wheel-dir", str(dist), str(source)],
                   check=True, cwd=base, capture_output=True, text=True)
    (wheel,) = dist.glob("retinanet-*.whl")
    target = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return wheel, target, elsewhere


def _run(installed, *args):
    _, target, elsewhere = installed
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_wheel_ships_the_package_and_the_recipes_and_nothing_else(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in RECIPES:
        assert f"retinanet/configs/{recipe}.py" in names
    assert "retinanet/configs/common/models.py" in names
    packages = {str(path.parent.relative_to(ROOT)) for path in (ROOT / "retinanet").rglob(
        "__init__.py")}
    assert packages <= {name.rsplit("/", 1)[0] for name in names}
    assert not [name for name in names if any(part in name for part in NOT_SHIPPED)]


def test_the_installed_command_answers_from_outside_the_clone(installed):
    _, target, _ = installed
    script = str(target / "bin" / "retinanet")
    import importlib.metadata

    (dist_info,) = target.glob("retinanet-*.dist-info")
    version = importlib.metadata.Distribution.at(dist_info).version
    assert _run(installed, script, "--version").strip() == f"retinanet {version}"
    listed = _run(installed, script, "config", "--list")
    assert {line.split()[0] for line in listed.splitlines()} == RECIPES
    resolved = _run(installed, script, "config", "--config=scratch_cpu")
    assert "config.name = 'scratch_cpu'" in resolved
    assert "config.train.time_budget_minutes = 16.0" in resolved


def test_the_demo_finds_its_recipe_through_the_installed_package(installed):
    _, target, _ = installed
    out = _run(installed, sys.executable, "-c",
               "import retinanet\n"
               "import retinanet.apps.demo as demo\n"
               "demo.FLAGS(['demo'])\n"
               "print(retinanet.__file__)\n"
               "print(demo.FLAGS['config'].config_filename)\n"
               "print(demo.FLAGS.config.name, retinanet.__version__)")
    package_file, demo_recipe, name, version = out.split()
    assert pathlib.Path(package_file).is_relative_to(target)
    assert pathlib.Path(demo_recipe) == target / "retinanet" / "configs" / "shapes.py"
    assert name == "shapes" and version != "0+unknown"
