"""``python -m dagnats_nb ...`` is the ``dagnats`` command."""

from dagnats_nb.adapters.cli.main import main

raise SystemExit(main())
