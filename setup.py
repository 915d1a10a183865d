"""Metadata and dependencies are in pyproject.toml; this file holds the package list, which
can't be declared statically: every `retinanet.*` package plus the recipes, which live in
the top-level configs/ and install as `retinanet.configs` (docs/ARCHITECTURE.md says why)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["retinanet", "retinanet.*"])
    + ["retinanet.configs"] + [f"retinanet.configs.{name}" for name in find_packages("configs")],
    package_dir={"retinanet.configs": "configs"},
)
