"""``python -m xentaudit``."""

from xentaudit.cli import main

main()
