"""Local processes for tests, benchmarks and the demo: a KRaft Kafka broker from
Maven Central jars, worker and bridge child processes."""
