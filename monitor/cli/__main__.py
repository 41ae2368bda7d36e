"""``python -m monitor.cli``: the same as the ``cce-monitor`` command."""

from monitor.cli import main

main()
