# Shared by the configuration check scripts.
# shellcheck shell=bash
failures=()

# run NAME COMMAND...: runs the command, records NAME if it fails.
run() {
  local name="$1"
  shift
  echo "==> $name"
  if "$@"; then
    echo
  else
    echo "FAILED: $name" >&2
    echo
    failures+=("$name")
  fi
}
