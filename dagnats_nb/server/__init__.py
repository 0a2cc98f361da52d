"""The embedded ``nats-server`` child process and the engine's data directory."""
