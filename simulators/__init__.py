"""Stand-ins for the outside world that fxstream's producers talk to, for tests and demos."""
