# The two commands a newcomer needs (README.md):
#   make demo   set up, start vionetd, boot a guest on it, show it working
#   make test   set up, then run the whole test suite
PY = .venv/bin/python

.PHONY: setup test test-fast demo proto bench fuzz clean

setup:
	sh scripts/setup.sh

test: setup
	$(PY) -m pytest -q

# The fast tests only (no real guest), while working.
test-fast:
	$(PY) -m pytest -q -m 'not guest'

# Long fuzz runs of every target (fuzz/run.sh; after make setup):
# make fuzz FUZZ_SECONDS=1800
FUZZ_SECONDS ?= 600
fuzz:
	fuzz/run.sh --seconds $(FUZZ_SECONDS)

demo: setup
	sh scripts/demo.sh

# Regenerate vionetd/vionetd_pb2.py from proto/ (tests check they match).
proto:
	$(PY) -m grpc_tools.protoc -Iproto --python_out=vionetd proto/vionetd.proto

bench: setup
	$(PY) bench/core.py

clean:
	rm -rf build .venv vionetd/_core*.so vionetd/*.o
