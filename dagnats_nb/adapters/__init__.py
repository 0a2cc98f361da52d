"""The ways in: the command line, the notebook, and HTTP. Adapters use the engine; the
engine never imports them (HTTP routes plug in through ``Engine.add_extension``)."""
