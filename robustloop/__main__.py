"""``python -m robustloop`` is the ``robustloop`` command."""

from robustloop.cli import main

raise SystemExit(main())
