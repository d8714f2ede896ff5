"""Regenerate docs/sweep.png, the README's picture of the default sweep.

Runs ``xentaudit sweep --plot docs/sweep.png`` (the default sweep: every installed backend's
implementations, every dtype and pattern, each backend in its training modes) with the Python
running this script, so the picture shows the backends installed there; the table report goes
to /dev/null.

    python docs/make_plot.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent / "sweep.png"


def main() -> None:
    command = [sys.executable, "-m", "xentaudit", "sweep", "--plot", str(TARGET)]
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
