"""Kafka side of streamrec: broker, topics, producer, and the stream workers with their sinks."""
