"""Sinks: Kafka topics into PostgreSQL, offsets committed after the database commit."""
