"""``python -m server ...`` is the ``werkbank`` command."""

from server.cli import main

main()
