"""curtin subcommands (stand-in)."""
