"""``python -m rmgap ...`` = the ``rmgap`` console script."""

from rmgap.cli import main

raise SystemExit(main())
