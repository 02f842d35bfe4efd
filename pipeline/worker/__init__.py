"""The Faust worker: thin adapters around the pure core."""
