"""``python -m admin.cli``: the ``veer`` command."""

from admin.cli.parsing import main

raise SystemExit(main())
