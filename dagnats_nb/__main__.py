"""``python -m dagnats_nb ...`` is the ``dagnats`` command."""

from dagnats_nb.adapters.cli.main import main

if __name__ == "__main__":  # importing it (a docs tool, a test) must not run the command
    raise SystemExit(main())
