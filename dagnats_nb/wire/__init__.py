"""The wire: the bytes dagnats and the Go engine exchange (subjects, message ids, event and
task payloads) and the NATS layout (streams, buckets) as data."""
