"""The image pipeline, one module per stage.

In order: ``iso`` (fetch and verify the ISO), ``render`` (the recipe), the install stage (a
backend from ``backends/``), ``pack`` (disk image to tarball and manifest; ``diskimage`` reads
the disk), ``verify`` (the image's contents), ``images`` (the image store, with ``locks``),
``upload`` (to MAAS). ``build`` composes them.
"""
