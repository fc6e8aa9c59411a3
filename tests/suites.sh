#!/usr/bin/env bash
# suites.sh BINARY SUITE...: runs the named modules (suites) of one test binary of the tests package,
# each in a process of its own and in turn, as the one-binary-per-suite layout ran them; every suite
# runs, and the failed ones are named at the end. BINARY is `integration` or `stack`
# (tests/tests/BINARY/main.rs). LIBTEST_ARGS adds arguments for the test harness (`--nocapture`).
#
# A filter `SUITE::` is a substring match, so first check that each one selects exactly the tests
# whose names start with it, and that the suites named cover every test of the binary not in SKIP
# (suites, space-separated, that another invocation runs). PARTIAL=1 (a second run of some suites
# on another stack) leaves out the cover check.
set -uo pipefail
CARGO=${CARGO:-cargo}
bin=$1; shift
suites=("$@")
list=$("$CARGO" test --workspace --test "$bin" -- --list --format terse 2>/dev/null | sed -n 's/: test$//p') || {
  echo "suites.sh: cannot list the tests of $bin" >&2; exit 1; }
covered=0
for s in "${suites[@]}" ${SKIP:-}; do
  matched=$(grep -c -- "$s::" <<<"$list")
  starts=$(grep -c -- "^$s::" <<<"$list")
  if [ "$matched" -ne "$starts" ] || [ "$starts" -eq 0 ]; then
    echo "suites.sh: the filter '$s::' selects $matched tests of $bin, $starts of them in suite $s" >&2; exit 1
  fi
  covered=$((covered + starts))
done
total=$(grep -c . <<<"$list")
if [ -z "${PARTIAL:-}" ] && [ "$covered" -ne "$total" ]; then
  echo "suites.sh: $bin has $total tests; the suites named (and SKIP) cover $covered" >&2; exit 1
fi
failed=()
for s in "${suites[@]}"; do
  echo "== $bin: $s" >&2
  # shellcheck disable=SC2086
  "$CARGO" test --workspace --test "$bin" -- "$s::" ${LIBTEST_ARGS:-} || failed+=("$s")
done
if ((${#failed[@]})); then
  echo "suites.sh: failed in $bin: ${failed[*]}" >&2; exit 1
fi
