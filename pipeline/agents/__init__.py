"""Agent declarations: what each Faust agent computes, as pure functions on the runtime."""
