# Sourced by bin/serve and bin/test: create .venv and install the project when pyproject.toml changed.
# EXTRAS may name an optional dependency group (e.g. "test"); an install with extras also serves plain use.
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
digest="$(sha256sum pyproject.toml | cut -c1-16)"
stamp=".venv/.installed-$digest${EXTRAS:+-$EXTRAS}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -e "$stamp" ] && { [ -n "${EXTRAS:-}" ] || ! ls .venv/.installed-"$digest"* >/dev/null 2>&1; }; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
  find .venv -maxdepth 1 -name '.installed-*' ! -name ".installed-$digest*" -delete
  touch "$stamp"
fi
