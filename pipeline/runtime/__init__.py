"""The worker runtime: the Faust-facing machinery every agent shares.

An agent is a declaration (`pipeline.runtime.declaration.AgentSpec`): what it
reads, what it writes, its state table and three pure functions. This package
owns everything else once: decoding, key and partition checks, dead letters,
the per-partition cursor, the re-read of skipped offsets, the one offset-commit
timer, the one wall-clock timer, revocation and recovery.
"""
