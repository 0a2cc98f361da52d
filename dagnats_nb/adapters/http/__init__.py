"""The HTTP side of an engine: ``/health`` and ``/ready``, webhooks, the worker bridge."""
