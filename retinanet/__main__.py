"""`python -m retinanet <command>`: the command line, as the `retinanet` script."""

from retinanet.apps.cli import run

run()
