"""Build backends: the ways the install stage turns a verified ISO into a root filesystem."""
