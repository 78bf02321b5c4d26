"""``python -m cloudinit_harness SOURCE VARIANT [legacy] [probe]``: one run, JSON on stdout."""

import json
import sys
from pathlib import Path

from cloudinit_harness import run

FIX_SCRIPT = (
    Path(__file__).resolve().parents[2] / "templates" / "cloudinit" / "oeib-cloudinit-fix.py"
)

result = run(
    Path(sys.argv[1]),
    FIX_SCRIPT,
    Path("/tmp/oeib-cloudinit-run"),
    variant=sys.argv[2],
    legacy_network_scripts="legacy" in sys.argv[3:],
    action="probe" if "probe" in sys.argv[3:] else "fix",
)
json.dump(result, sys.stdout, indent=1)
sys.stdout.write("\n")
