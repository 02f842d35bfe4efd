# The two commands a fresh machine needs:
#   make demo   sets up and runs the live pipeline on the embedded stack
#   make test   sets up and runs the whole test suite
.PHONY: setup demo test test-docker lint bench stack-up stack-down

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/fxstream demo

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# The same suite with Kafka and PostgreSQL in containers, and the docker compose
# scale-out test; starts (and stops) a Docker engine when none answers.
test-docker: setup
	PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/test-docker.sh

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/fxstream bench

stack-up: setup
	.venv/bin/fxstream stack up

stack-down:
	.venv/bin/fxstream stack down
