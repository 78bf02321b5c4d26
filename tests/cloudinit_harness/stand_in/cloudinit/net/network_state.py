"""Network config v1 parsing (kept as the list of config entries)."""


def parse_net_config_data(config):
    """The v1 config entries."""
    return list(config["config"])
