#!/usr/bin/env bash
# render.sh — renders deploy/'s templates (*.template) with the settings of
# one env file into its RENDERED_DIR, the only place compose mounts
# configuration from:
#
#   synapse/homeserver.yaml, synapse/log.config   Synapse (mounted at SYNAPSE_CONFIG_DIR)
#   synapse/appservice.yaml                       the application service's registration,
#                                                 printed by `matrix-provisioner appservice-registration`
#   synapse/password-module-secret                PASSWORD_MODULE_SECRET, for Synapse's password module
#   provisioner.env                               the service's environment (compose env_file)
#   provisioner/oidc-signing-key.pem              a copy of OIDC_SIGNING_KEY_PATH, when set
#   postgres/init.sql                             PostgreSQL's first start
#   element/config.json                           Element Web
#   nginx/gateway.conf, nginx/gateway.d/*.conf    the gateway (mounted at /etc/nginx/conf.d)
#   well-known/matrix/server, .../client          the gateway's /.well-known/matrix answers,
#                                                 for a web server of SYNAPSE_SERVER_NAME elsewhere
#   prometheus/prometheus.yml, .../alerts.yml     Prometheus (mounted at /etc/prometheus);
#                                                 alerts.yml is copied as it is
#
# Only the settings named in the env file (and the few derived below) are
# substituted: nginx's own $variables are left alone. A template naming an
# unknown ${SETTING} is an error, and so is a missing, empty or malformed
# setting. Files are rewritten in place (running containers see the new
# contents; restart the service that reads them).
#
# Usage:   deploy/render.sh [ENV_FILE]             (default: deploy/.env)
# Env:     MATRIX_PROVISIONER  command running matrix-provisioner, for the
#                              registration (default: `matrix-provisioner` on
#                              PATH, else the compose service's image through
#                              `docker-compose run`)
# Needs:   bash, envsubst (Debian: gettext-base), od.
set -euo pipefail

deploy="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$deploy/settings.sh"

die() { echo "render: $*" >&2; exit 1; }

env_file="${1:-$deploy/.env}"
[[ -f "$env_file" ]] || die "no $env_file (deploy/new-env.sh makes one from .env.example)"
env_file="$(cd "$(dirname "$env_file")" && pwd)/$(basename "$env_file")"
command -v envsubst >/dev/null 2>&1 || die "envsubst is missing (Debian: apt-get install gettext-base)"

# read_env FILE PREFIX: the KEY=VALUE lines of FILE into the associative
# array named PREFIX_value and the ordered array PREFIX_keys.
read_env() {
    local file="$1" line n=0 key
    local -n values="$2_value" order="$2_keys"
    while IFS= read -r line || [[ -n "$line" ]]; do
        n=$((n + 1))
        line="${line%$'\r'}"
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        [[ "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] ||
            die "$file:$n: not KEY=VALUE: $line"
        key="${BASH_REMATCH[1]}"
        [[ -z "${values[$key]+set}" ]] || die "$file:$n: $key is set twice"
        values[$key]="${BASH_REMATCH[2]}"
        order+=("$key")
    done <"$file"
}

declare -A example_value=() env_value=()
example_keys=() env_keys=()
read_env "$deploy/.env.example" example
read_env "$env_file" env

# ---- checks ----------------------------------------------------------------
missing=()
for key in "${example_keys[@]}"; do
    [[ -n "${env_value[$key]+set}" ]] || missing+=("$key")
done
((${#missing[@]} == 0)) ||
    die "$env_file lacks ${missing[*]} (new settings of .env.example: copy them over)"
for key in "${env_keys[@]}"; do
    if [[ -z "${example_value[$key]+set}" && "$key" != COMPOSE_* && "$key" != DOCKER_* ]]; then
        echo "render: warning: $env_file sets $key, which .env.example does not know" >&2
    fi
done

v() { printf '%s' "${env_value[$1]}"; }

for key in "${example_keys[@]}"; do
    value="$(v "$key")"
    if [[ -z "$value" ]]; then
        in_list "$key" "${OPTIONAL_KEYS[@]}" && continue
        if in_list "$key" "${SECRET_KEYS[@]}"; then
            die "$key is empty: make one with \`openssl rand -hex 32\` (deploy/new-env.sh fills them all)"
        fi
        die "$key is empty"
    fi
    [[ "$value" != *[\"\'\\\$\`]* ]] || die "$key contains one of \" ' \\ \$ \` (not allowed in any setting)"
    [[ "$value" != *[[:cntrl:]]* ]] || die "$key contains a control character"
done

secret_re='^[A-Za-z0-9._~-]{16,}$'
for key in "${SECRET_KEYS[@]}"; do
    value="$(v "$key")"
    if in_list "$key" "${LIST_SECRET_KEYS[@]}"; then
        IFS=',' read -ra parts <<<"$value"
        for part in "${parts[@]}"; do
            [[ "$part" =~ $secret_re ]] ||
                die "$key: each comma-separated key must be 16 or more of A-Z a-z 0-9 . _ ~ -"
        done
    else
        [[ "$value" =~ $secret_re ]] || die "$key must be 16 or more of A-Z a-z 0-9 . _ ~ -"
    fi
done
[[ -n "$(v AUTH_JWKS_URL)$(v AUTH_JWT_SECRET)" ]] ||
    die "set AUTH_JWKS_URL or AUTH_JWT_SECRET (the keys of DAARION access tokens)"

for key in AUTH_LOGIN_URL AUTH_PASSWORD_LOGIN_URL DAARION_LOGOUT_URL AUTH_JWKS_URL AUTH_API_URL CITY_API_URL CITY_EVENTS_URL; do
    value="$(v "$key")"
    [[ -z "$value" || "$value" =~ ^https?://[^[:space:]]+$ ]] || die "$key must be an http(s) URL"
done
for key in HTTPS_PORT HTTP_PORT POSTGRES_PORT SYNAPSE_PORT SYNAPSE_METRICS_PORT PROVISIONER_PORT ELEMENT_PORT; do
    value="$(v "$key")"
    [[ "$value" =~ ^[0-9]{1,5}$ ]] && ((10#$value >= 1 && 10#$value <= 65535)) || die "$key must be a port number"
done
[[ "$(v SYNAPSE_SERVER_NAME)" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?$ ]] || die "SYNAPSE_SERVER_NAME must be a host name"
[[ "$(v MATRIX_HOST)" =~ ^[A-Za-z0-9.-]+$ ]] || die "MATRIX_HOST must be a host name (no scheme, no port)"
for key in OIDC_IDP_ID APPSERVICE_ID APPSERVICE_BOT POSTGRES_SYNAPSE_DB POSTGRES_PROVISIONER_DB; do
    [[ "$(v "$key")" =~ ^[a-z0-9_.-]+$ ]] || die "$key must be of a-z 0-9 . _ -"
done
if [[ -n "$(v LOCALPART_SOURCES)" ]]; then
    IFS=',' read -ra parts <<<"$(v LOCALPART_SOURCES)"
    for part in "${parts[@]}"; do
        part="${part//[[:space:]]/}"
        [[ -z "$part" ]] || in_list "$part" username display_name email user_id ||
            die "LOCALPART_SOURCES: $part is not one of username, display_name, email, user_id"
    done
fi
adopt="$(v ADOPT_LOCALPART_TEMPLATE)"
[[ -z "$adopt" || "$adopt" =~ ^[a-z0-9._=/{}-]*\{user_id(_hex8)?\}[a-z0-9._=/{}-]*$ ]] ||
    die "ADOPT_LOCALPART_TEMPLATE must be a localpart (a-z 0-9 . _ = / -) with {user_id} or {user_id_hex8} in it"
case "$(v GATEWAY_EXPOSE_WEBHOOKS)" in
    yes | no) ;;
    *) die "GATEWAY_EXPOSE_WEBHOOKS must be yes or no" ;;
esac

# MEDIA_MAX_UPLOAD_SIZE (Synapse's and nginx's notation) >= AVATAR_MAX_BYTES.
[[ "$(v AVATAR_MAX_BYTES)" =~ ^[0-9]+$ ]] || die "AVATAR_MAX_BYTES must be a number of bytes"
[[ "$(v MEDIA_MAX_UPLOAD_SIZE)" =~ ^([0-9]+)([KMG]?)$ ]] || die "MEDIA_MAX_UPLOAD_SIZE must be a number with K, M or G"
upload_bytes="${BASH_REMATCH[1]}"
case "${BASH_REMATCH[2]}" in
    K) upload_bytes=$((upload_bytes * 1024)) ;;
    M) upload_bytes=$((upload_bytes * 1024 * 1024)) ;;
    G) upload_bytes=$((upload_bytes * 1024 * 1024 * 1024)) ;;
esac
((upload_bytes >= $(v AVATAR_MAX_BYTES))) ||
    die "MEDIA_MAX_UPLOAD_SIZE ($(v MEDIA_MAX_UPLOAD_SIZE)) is below AVATAR_MAX_BYTES ($(v AVATAR_MAX_BYTES)): Synapse would refuse the avatars the service uploads"

signing_key="$(v OIDC_SIGNING_KEY_PATH)"
if [[ -n "$signing_key" ]]; then
    [[ -r "$signing_key" ]] || die "OIDC_SIGNING_KEY_PATH: cannot read $signing_key"
    grep -q -- '-----BEGIN .*PRIVATE KEY-----' "$signing_key" ||
        die "OIDC_SIGNING_KEY_PATH: $signing_key is not a PEM private key"
fi

# ---- derived settings --------------------------------------------------------
declare -A derived=()
# The one public origin: Synapse's public_baseurl, the OpenID issuer, Element's homeserver.
if [[ "$(v HTTPS_PORT)" == 443 ]]; then
    derived[MATRIX_ORIGIN]="https://$(v MATRIX_HOST)"
else
    derived[MATRIX_ORIGIN]="https://$(v MATRIX_HOST):$(v HTTPS_PORT)"
fi
# nginx's allow list of the operators' paths.
rules=""
if [[ -n "$(v GATEWAY_ADMIN_ALLOW)" ]]; then
    IFS=',' read -ra parts <<<"$(v GATEWAY_ADMIN_ALLOW)"
    for part in "${parts[@]}"; do
        part="${part//[[:space:]]/}"
        [[ -n "$part" ]] || continue
        [[ "$part" =~ ^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$ ]] ||
            die "GATEWAY_ADMIN_ALLOW: $part is not an address or CIDR"
        rules+="    allow $part;"$'\n'
    done
    rules+="    deny all;"
fi
derived[GATEWAY_ADMIN_RULES]="$rules"
derived[OIDC_SIGNING_KEY_FILE]=""
[[ -z "$signing_key" ]] || derived[OIDC_SIGNING_KEY_FILE]="$(v PROVISIONER_CONFIG_DIR)/oidc-signing-key.pem"

# ---- monitoring (deploy/prometheus/) -------------------------------------------
value="$(v PROMETHEUS_PORT)"
[[ "$value" =~ ^[0-9]{1,5}$ ]] && ((10#$value >= 1 && 10#$value <= 65535)) || die "PROMETHEUS_PORT must be a port number"
[[ "$(v PROMETHEUS_RETENTION)" =~ ^([0-9]+(y|w|d|h|ms|m|s))+$ ]] ||
    die "PROMETHEUS_RETENTION must be a duration like 30d, 12w or 1y"
# prometheus.yml's list of Alertmanagers: "host:port", "host:port" (or nothing).
targets=""
IFS=',' read -ra parts <<<"$(v ALERTMANAGER_TARGETS)"
for part in "${parts[@]}"; do
    part="${part//[[:space:]]/}"
    [[ -n "$part" ]] || continue
    [[ "$part" =~ ^[A-Za-z0-9.-]+:[0-9]{1,5}$ ]] || die "ALERTMANAGER_TARGETS: $part is not host:port"
    targets+="${targets:+, }\"$part\""
done
derived[ALERTMANAGER_TARGETS_YAML]="$targets"

# ---- rendering ---------------------------------------------------------------
out="$(v RENDERED_DIR)"
[[ "$out" == /* ]] || out="$deploy/$out"
umask 022
mkdir -p "$out"
chmod 700 "$out" # secrets inside; the files themselves are readable by the containers' users
out="$(cd "$out" && pwd)"

assignments=()
format=""
for key in "${env_keys[@]}"; do
    assignments+=("$key=${env_value[$key]}")
    format+="\${$key} "
done
for key in "${!derived[@]}"; do
    assignments+=("$key=${derived[$key]}")
    format+="\${$key} "
done

written=()
# put SRC DEST MODE: writes SRC's contents to DEST in place (same inode, so
# a file compose mounted by itself shows the new contents).
put() {
    local dir
    dir="$(dirname "$2")"
    if [[ "$dir" != "$out" ]]; then
        mkdir -p "$dir"
        chmod 755 "$dir"
    fi
    [[ -e "$2" ]] || install -m "$3" /dev/null "$2"
    chmod "$3" "$2"
    cat "$1" >"$2"
    written+=("${2#"$out"/}")
}

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT

# render TEMPLATE DEST MODE (TEMPLATE relative to deploy/, DEST to $out).
render() {
    local src="$deploy/$1" name
    while read -r name; do
        [[ -n "$name" ]] || continue
        [[ -n "${env_value[$name]+set}" || -n "${derived[$name]+set}" ]] ||
            die "$1 uses \${$name}, which is not a setting of .env.example"
    done < <(grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' "$src" | sed 's/^\${\(.*\)}$/\1/' | sort -u)
    env -i "${assignments[@]}" envsubst "$format" <"$src" >"$tmp"
    if grep -n '\${' "$tmp" >&2; then
        die "$1: something like \${…} is left after rendering (above)"
    fi
    put "$tmp" "$out/$2" "$3"
}

render synapse/homeserver.yaml.template synapse/homeserver.yaml 644
render synapse/log.config.template synapse/log.config 644
render postgres/init.sql.template postgres/init.sql 644
render element/config.json.template element/config.json 644
render nginx/gateway.conf.template nginx/gateway.conf 644
rm -f "$out"/nginx/gateway.d/*.conf
mkdir -p "$out/nginx/gateway.d"
chmod 755 "$out/nginx/gateway.d"
[[ "$(v GATEWAY_EXPOSE_WEBHOOKS)" == no ]] ||
    render nginx/gateway.d/webhooks.conf.template nginx/gateway.d/webhooks.conf 644
[[ -z "$(v GATEWAY_ADMIN_ALLOW)" ]] ||
    render nginx/gateway.d/admin.conf.template nginx/gateway.d/admin.conf 644
render well-known/matrix/server.template well-known/matrix/server 644
render well-known/matrix/client.template well-known/matrix/client 644
# Prometheus: its configuration, and beside it the alert rules it loads.
render prometheus/prometheus.yml.template prometheus/prometheus.yml 644
put "$deploy/prometheus/alerts.yml" "$out/prometheus/alerts.yml" 644
# Read by docker-compose on the host only.
render provisioner/provisioner.env.template provisioner.env 600
# The password module's secret, read by Synapse (uid 991 in its container)
# at start: readable like homeserver.yaml, which holds Synapse's other
# secrets; RENDERED_DIR itself is the host user's alone.
printf '%s\n' "$(v PASSWORD_MODULE_SECRET)" >"$tmp"
put "$tmp" "$out/synapse/password-module-secret" 644
mkdir -p "$out/provisioner"
chmod 755 "$out/provisioner"
if [[ -n "$signing_key" ]]; then
    # Readable by the service's user (uid 10001) inside its container.
    put "$signing_key" "$out/provisioner/oidc-signing-key.pem" 644
else
    rm -f "$out/provisioner/oidc-signing-key.pem"
fi

# ---- the application service's registration ------------------------------
# Printed by the service from the very settings it runs with.
reg_env=()
while IFS= read -r line; do
    reg_env+=("$line")
done < <(grep -E '^(SYNAPSE_SERVER_NAME|SYNAPSE_REGISTRATION_SECRET|APPSERVICE_[A-Z_]+|AGENT_LOCALPART_PREFIX|ROOM_ALIAS_PREFIX)=' "$out/provisioner.env")
if [[ -n "${MATRIX_PROVISIONER:-}" ]]; then
    read -ra runner <<<"$MATRIX_PROVISIONER"
    env -i "PATH=$PATH" "${reg_env[@]}" "${runner[@]}" appservice-registration >"$tmp" ||
        die "\`$MATRIX_PROVISIONER appservice-registration\` failed"
elif command -v matrix-provisioner >/dev/null 2>&1; then
    env -i "PATH=$PATH" "${reg_env[@]}" matrix-provisioner appservice-registration >"$tmp" ||
        die "\`matrix-provisioner appservice-registration\` failed"
else
    if command -v docker-compose >/dev/null 2>&1; then
        compose=(docker-compose)
    elif docker compose version >/dev/null 2>&1; then
        compose=(docker compose)
    else
        die "no matrix-provisioner to print the registration: set MATRIX_PROVISIONER, or install docker-compose"
    fi
    echo "render: printing the registration with the provisioner image (docker-compose run)…" >&2
    (cd "$deploy" && "${compose[@]}" --env-file "$env_file" run --rm --no-deps -T \
        provisioner appservice-registration) >"$tmp" ||
        die "\`${compose[*]} run provisioner appservice-registration\` failed"
fi
# Only the registration itself (a build may have printed before it).
sed -i -n '/^# matrix-provisioner/,$p' "$tmp"
grep -q '^as_token: ' "$tmp" && grep -q '^url: ' "$tmp" ||
    die "the registration printed by matrix-provisioner has no as_token or url"
put "$tmp" "$out/synapse/appservice.yaml" 644

for file in "${written[@]}"; do
    echo "render: wrote $file" >&2
done
echo "$out"
