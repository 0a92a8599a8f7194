# Two commands: `make run` and `make test`. Everything else is a detail.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KHAZNA_HOME ?= ./khazna-data
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test check lint typecheck install clean messages screenshots vendor

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Khazna needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	KHAZNA_HOME=$(KHAZNA_HOME) $(BIN)/khazna serve --demo --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check khazna tests bench
	$(BIN)/mypy khazna
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check khazna tests bench
	$(BIN)/ruff format --check khazna tests bench

typecheck: $(STAMP)
	$(BIN)/mypy khazna

# After changing the pages' text: extract their strings (rules in khazna/web/babel.cfg) and
# merge them into the three catalogs; then translate the new, empty entries of
# khazna/web/locale/{fr,ar,en}/LC_MESSAGES/messages.po (tests/test_i18n.py says which).
LOCALE := khazna/web/locale
messages: $(STAMP)
	$(BIN)/pybabel extract -F khazna/web/babel.cfg -o $(LOCALE)/messages.pot \
		--no-location --omit-header --sort-output --width=100 .
	$(BIN)/pybabel update -i $(LOCALE)/messages.pot -d $(LOCALE) \
		--no-fuzzy-matching --ignore-obsolete --width=100

# The README's pictures: the browser tests, saving each page they see into docs/screenshots.
screenshots: $(STAMP)
	SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/test_browser.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The pages' browser libraries (package.json, pinned in package-lock.json), copied from
# node_modules into the package; the copies are committed, so neither a clean clone nor
# pip install needs npm or the network. Run after changing package.json.
VENDOR := khazna/web/static/vendor
vendor:
	npm ci --no-audit --no-fund --ignore-scripts
	rm -rf $(VENDOR)/leaflet && mkdir -p $(VENDOR)/leaflet
	cp -r node_modules/leaflet/dist/leaflet.js node_modules/leaflet/dist/leaflet.css \
		node_modules/leaflet/dist/images node_modules/leaflet/LICENSE $(VENDOR)/leaflet/
