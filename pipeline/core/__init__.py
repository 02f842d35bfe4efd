"""The pure core: plain data in, plain data out. No Kafka, Faust or SQL here."""
