"""The long-running service: the store (snapshots, history, outbox), durable delivery, the HTTP API, metrics."""
