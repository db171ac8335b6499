# The two commands a fresh machine needs (see README.md): `make demo` and `make test`.
.PHONY: demo test lint bench bootstrap

bootstrap:
	scripts/bootstrap.sh --peers --kafka

demo:
	scripts/bootstrap.sh
	.venv/bin/shoal run --demo

test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/pytest

lint:
	.venv/bin/ruff check .

bench:
	scripts/bootstrap.sh --peers --kafka
	.venv/bin/python -m benchmarks
