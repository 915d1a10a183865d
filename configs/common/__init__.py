"""Pieces the recipes share: data sources, model families and schedules.

Each piece is a function that sets its fields on a config and returns nothing, so a recipe
reads as the pieces it takes and what it changes after them. Your own config file can import
them too (`from retinanet.configs.common import models`).
"""
