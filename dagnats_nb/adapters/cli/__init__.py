"""The ``dagnats`` command line."""
