#!/usr/bin/env bash
# Plays the user in the browser on the OAuth server's own pages, over HTTP:
#   approve.sh ISSUER USER_CODE LOGIN [deny]
# confirm the user code -> log in as LOGIN -> consent (or abort at the first page with `deny`).
# No pipefail: `grep -q` and `head` end their pipes early, and the writer's SIGPIPE must not count
# as a failure (it made consent flaky). Each pipeline's status is its last command's.
set -eu
O=${1%/}; UC=$2; LOGIN=$3; DENY=${4:-}
J=$(mktemp); trap 'rm -f "$J"' EXIT
form() { grep -o "name=\"$1\" value=\"[^\"]*\"" | head -1 | sed 's/.*value="\([^"]*\)"/\1/'; }
action() { grep -o '<form[^>]*action="[^"]*"' | head -1 | sed 's/.*action="\([^"]*\)"/\1/'; }
C=(curl -sf --max-time 10 -c "$J" -b "$J")
P=$("${C[@]}" "$O/device?user_code=$UC"); X=$(echo "$P" | form xsrf)
if [ -n "$DENY" ]; then
  "${C[@]}" -L -X POST "$O/device" -d "xsrf=$X" -d "user_code=$UC" -d abort=yes >/dev/null; echo denied; exit 0
fi
P=$("${C[@]}" -L "$O/device" -d "xsrf=$X" -d "user_code=$UC" -d confirm=yes)
A=$(echo "$P" | action); [[ $A == http* ]] || A="$O$A"
P=$("${C[@]}" -L "$A" -d prompt=login -d "login=$LOGIN" -d password=x)
A=$(echo "$P" | action); [[ $A == http* ]] || A="$O$A"
P=$("${C[@]}" -L "$A" -d prompt=consent)
grep -q 'Sign-in Success' <<<"$P" || { echo "consent failed" >&2; echo "$P" | head -20 >&2; exit 1; }
echo approved
