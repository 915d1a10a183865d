"""The shipped recipes: `retinanet train --config=NAME` takes one by its file's name.

This folder installs as the `retinanet.configs` package (`retinanet config --list` lists the
recipes). Each recipe starts from `retinanet.config.default_config()`, takes the shared
pieces from `common/` and sets what makes it different.
"""
