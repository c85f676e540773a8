# Benchmarks print their numbers and write them to bench/results/.
PY ?= .venv/bin/python

.PHONY: deb agent-bundle agent-packages agent-wheels bench bench-trust bench-merkle bench-audit bench-fleet bench-inventory bench-patch bench-ingest bench-schedule bench-flood bench-cli bench-console bench-detect bench-session bench-scale test up sbom

bench: bench-trust bench-merkle bench-audit bench-fleet bench-inventory bench-patch bench-ingest bench-schedule bench-flood bench-cli bench-console bench-detect bench-session

bench-trust:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/trust_bench.py | tee bench/results/trust.json

bench-audit:
	@mkdir -p bench/results
	PYTHONPATH=. $(PY) bench/audit_bench.py bench/results/audit.json

bench-merkle:
	@mkdir -p bench/results
	PYTHONPATH=. $(PY) bench/merkle_bench.py | tee bench/results/merkle.jsonl

test:
	./run-tests

# The agent alone, for devices (issue 16; docs/agent.md, docs/design/agent-packaging.md): a Debian
# package and a self-contained bundle for other distributions, built from this checkout into dist/,
# each with its SHA-256 printed. Only fetching the wheels (agent-wheels, or the first build) uses the
# network (PyPI); a build installs them from dist/agent-wheels without it.
AGENT_BUILD = bash -c 'source scripts/bootstrap.sh build && exec python scripts/build_agent_package.py "$$@"' build

agent-wheels:
	$(AGENT_BUILD) fetch

deb:
	$(AGENT_BUILD) deb

agent-bundle:
	$(AGENT_BUILD) bundle

agent-packages:
	$(AGENT_BUILD) deb bundle

up:
	./quickstart

bench-fleet:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/fleet_bench.py 1000 bench/results/fleet.json

bench-scale:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/scale_bench.py 1000 2 bench/results/scale.json
	PYTHONPATH=.:tests $(PY) bench/scale_bench.py storm 1000 5000 bench/results/scale-storm.json
	PYTHONPATH=.:tests $(PY) bench/scale_bench.py failover 1000 bench/results/scale-failover.json

bench-inventory:
	@mkdir -p bench/results
	PYTHONPATH=. $(PY) bench/inventory_bench.py bench/results/inventory.json

# Remote access tool detection (issue 15): executable fingerprints over 1,000 processes and local
# protocol probes of 100 listeners, cold and warm; goal: at most 50 ms of agent CPU per inventory.
bench-detect:
	@mkdir -p bench/results
	PYTHONPATH=. $(PY) bench/detect_bench.py bench/results/detect.json

# Rampart's own software bill of materials (CycloneDX 1.6), from the installed environment.
sbom:
	@mkdir -p dist
	PYTHONPATH=. $(PY) -m rampart.cli.main sbom --self --output dist/rampart.cdx.json

bench-patch:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/patch_bench.py bench/results/patch.json

bench-ingest:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/ingest_bench.py 1000 bench/results/ingest.json

bench-schedule:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/schedule_bench.py bench/results/schedule.json

# What hostile devices flooding at full speed cost an honest device (T16), as ratios to a baseline.
# Remote sessions (issue 13): keystroke round trip through the relay against a raw loopback echo,
# a 100 MB cat, server CPU per session, 100 concurrent sessions.
bench-session:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/session_bench.py bench/results/session.json

bench-flood:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/flood_bench.py bench/results/flood.json

# How long `rampart --help` and a read command take, start to exit (issue 12), next to `python -c pass`
# and to the CLI before the start-up work (fcfb241).
bench-cli:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/cli_bench.py bench/results/cli.json --baseline fcfb241

# The server console (issue 14): device list (first page, filtered search, last page) at 10,000
# devices and the tenant dashboard at 10,000 devices and 100,000 alerts, over HTTPS; goals 200/300 ms.
bench-console:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/console_bench.py bench/results/console.json
