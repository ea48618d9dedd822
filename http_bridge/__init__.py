"""The HTTP bridge: the old synchronous REST API, served over Kafka request/reply
(with --bootstrap) or by an in-process worker (embedded, without it)."""
