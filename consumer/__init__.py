"""The Kafka worker: requests in, batched inference, replies out.

`consumer.protocol` is the wire contract shared with the bridge and the client
tools; it must stay importable without TensorFlow or a broker.
"""
