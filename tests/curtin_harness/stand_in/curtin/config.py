"""Config loading (the harness writes the merged config as JSON, which is YAML too)."""

import json


def load_command_config(args, state):
    """The merged curtin config the ``config`` state entry points to."""
    if getattr(args, "config", None):
        return args.config
    path = state.get("config")
    if not path:
        return {}
    with open(path) as stream:
        return json.load(stream)
