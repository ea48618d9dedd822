#!/bin/sh
# Stand-in for Kafka's tool of that name: only --bootstrap-server HOST:PORT, and
# only the exit status (0 when the broker answers ApiVersions). See kafka_standin.py.
exec python3 /opt/kafka/kafka_standin.py api-versions "$@"
