#!/usr/bin/env bash
# new-env.sh — writes a new env file for deploy/ from .env.example, with a
# fresh random value (32 bytes, hex) for every secret left empty there.
# Then edit it: the names, DAARION's URLs, the TLS paths.
#
# Usage:   deploy/new-env.sh [OUT]      (default: deploy/.env; never overwrites)
set -euo pipefail

deploy="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$deploy/settings.sh"

out="${1:-$deploy/.env}"
if [[ -e "$out" ]]; then
    echo "new-env: $out exists; not overwriting it" >&2
    exit 1
fi
umask 077
while IFS= read -r line || [[ -n "$line" ]]; do
    if [[ "$line" =~ ^([A-Z][A-Z0-9_]*)=$ ]] && in_list "${BASH_REMATCH[1]}" "${SECRET_KEYS[@]}"; then
        line="${BASH_REMATCH[1]}=$(fresh_secret)"
    fi
    printf '%s\n' "$line"
done <"$deploy/.env.example" >"$out"
echo "new-env: wrote $out (mode 0600) with fresh secrets; now set its names, DAARION's URLs and TLS paths" >&2
