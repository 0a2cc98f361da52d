"""The example workflows of the README and the docs (``*.json``, ``*.yaml``) and their
handlers (:mod:`examples.handlers`)."""
