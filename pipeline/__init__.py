"""fxstream: Kafka-native FX market-data pipeline."""

__version__ = "0.1.0"
