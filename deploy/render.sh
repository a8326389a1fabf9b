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
#   provisioner/nats.creds, nats-ca.pem           copies of NATS_CREDS_PATH and NATS_TLS_CA_PATH, when set
#   postgres/init.sql                             PostgreSQL's first start
#   element/config.json                           Element Web
#   nginx/gateway.conf, nginx/gateway.d/*.conf    the gateway (mounted at /etc/nginx/conf.d)
#   well-known/matrix/server, .../client          the gateway's /.well-known/matrix answers,
#                                                 for a web server of SYNAPSE_SERVER_NAME elsewhere
#                                                 (server only with FEDERATION=on)
#   with SYNAPSE_WORKERS=on also: synapse/workers/*.yaml (each worker's file),
#   redis/redis.conf, nginx/gateway-workers.conf and nginx/gateway.d/workers.map
#   coturn/turnserver.conf                        coturn, the TURN server of calls (mounted at /etc/coturn)
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
case "$(v FEDERATION)" in
    on | off) ;;
    *) die "FEDERATION must be on or off" ;;
esac

# DAARION's NATS (README, "NATS JetStream"): what the service would refuse
# at start, said here instead.
if [[ -n "$(v NATS_URL)" ]]; then
    IFS=',' read -ra parts <<<"$(v NATS_URL)"
    for part in "${parts[@]}"; do
        part="${part//[[:space:]]/}"
        [[ "$part" =~ ^(nats|tls)://[^@/[:space:]]+$ ]] ||
            die "NATS_URL must list nats:// or tls:// host:port addresses, without credentials (NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_CREDS_PATH)"
    done
fi
for key in NATS_CREATE_STREAMS NATS_REQUIRE_SIGNATURE NATS_OUT; do
    case "$(v "$key")" in
        true | false) ;;
        *) die "$key must be true or false" ;;
    esac
done
[[ "$(v NATS_OUT)" == false || -n "$(v NATS_URL)" ]] || die "NATS_OUT=true needs NATS_URL"
[[ "$(v NATS_CONSUMER)" =~ ^[A-Za-z0-9_-]+$ ]] || die "NATS_CONSUMER must be of A-Z a-z 0-9 _ -"
[[ -n "$(v NATS_USER)" || -z "$(v NATS_PASSWORD)" ]] || die "NATS_PASSWORD needs NATS_USER"
[[ -z "$(v NATS_USER)" || -n "$(v NATS_PASSWORD)" ]] || die "NATS_USER needs NATS_PASSWORD"
nats_ways=0
for key in NATS_CREDS_PATH NATS_USER NATS_TOKEN; do
    [[ -z "$(v "$key")" ]] || nats_ways=$((nats_ways + 1))
done
((nats_ways <= 1)) || die "NATS_CREDS_PATH, NATS_USER + NATS_PASSWORD and NATS_TOKEN are three ways of authenticating to NATS: set one"
nats_creds="$(v NATS_CREDS_PATH)"
[[ -z "$nats_creds" ]] || grep -q -- '-----BEGIN NATS USER JWT-----' "$nats_creds" 2>/dev/null ||
    die "NATS_CREDS_PATH: $nats_creds is not a readable NATS .creds file"
nats_ca="$(v NATS_TLS_CA_PATH)"
[[ -z "$nats_ca" ]] || grep -q -- '-----BEGIN CERTIFICATE-----' "$nats_ca" 2>/dev/null ||
    die "NATS_TLS_CA_PATH: $nats_ca is not a readable PEM certificate"

# SYNAPSE_WORKERS (deploy/README.md, "More than one process").
case "$(v SYNAPSE_WORKERS)" in
    on | off) ;;
    *) die "SYNAPSE_WORKERS must be on or off" ;;
esac
for key in SYNAPSE_REPLICATION_PORT SYNAPSE_CLIENT_WORKER_PORT SYNAPSE_FEDERATION_WORKER_PORT \
    SYNAPSE_FEDERATION_SENDER_PORT SYNAPSE_EVENTS_WORKER_PORT REDIS_PORT PROVISIONER_2_PORT GATEWAY_INTERNAL_PORT; do
    value="$(v "$key")"
    [[ "$value" =~ ^[0-9]{1,5}$ ]] && ((10#$value >= 1 && 10#$value <= 65535)) || die "$key must be a port number"
done
for key in SYNAPSE_CLIENT_WORKER_HOST SYNAPSE_FEDERATION_WORKER_HOST SYNAPSE_FEDERATION_SENDER_HOST \
    SYNAPSE_EVENTS_WORKER_HOST REDIS_HOST PROVISIONER_2_HOST; do
    [[ "$(v "$key")" =~ ^[A-Za-z0-9.-]+$ ]] || die "$key must be a host name"
done
# docker-compose runs the workers from docker-compose.workers.yml, which it
# reads when COMPOSE_FILE (in this env file) names it: both or neither.
workers_file=no
[[ ":${env_value[COMPOSE_FILE]:-}:" != *docker-compose.workers.yml:* ]] || workers_file=yes
if [[ "$(v SYNAPSE_WORKERS)" == on && "$workers_file" == no ]]; then
    die "SYNAPSE_WORKERS=on: add COMPOSE_FILE=docker-compose.yml:docker-compose.workers.yml to $env_file (docker-compose then runs the workers)"
elif [[ "$(v SYNAPSE_WORKERS)" == off && "$workers_file" == yes ]]; then
    die "COMPOSE_FILE names docker-compose.workers.yml but SYNAPSE_WORKERS=off: set SYNAPSE_WORKERS=on, or take it out of COMPOSE_FILE"
fi

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
# Federation (FEDERATION): Synapse's listener serves the federation and key
# resources only when on; off, federation_domain_whitelist is empty (Synapse
# sends to and accepts from no other server), on, it is null (any server).
if [[ "$(v FEDERATION)" == on ]]; then
    derived[SYNAPSE_LISTENER_RESOURCES]="client, federation"
    derived[SYNAPSE_FEDERATION_WHITELIST]="null"
else
    derived[SYNAPSE_LISTENER_RESOURCES]="client"
    derived[SYNAPSE_FEDERATION_WHITELIST]="[]"
fi
[[ -z "$signing_key" ]] || derived[OIDC_SIGNING_KEY_FILE]="$(v PROVISIONER_CONFIG_DIR)/oidc-signing-key.pem"
derived[NATS_CREDS_FILE]=""
[[ -z "$nats_creds" ]] || derived[NATS_CREDS_FILE]="$(v PROVISIONER_CONFIG_DIR)/nats.creds"
derived[NATS_TLS_CA_FILE]=""
[[ -z "$nats_ca" ]] || derived[NATS_TLS_CA_FILE]="$(v PROVISIONER_CONFIG_DIR)/nats-ca.pem"
# SYNAPSE_WORKERS: how Synapse and the service reach each other (directly,
# or through the gateway's internal port, which routes to Synapse's workers
# and balances the service's replicas), and the pieces of homeserver.yaml
# and gateway.conf that only workers have (their templates in
# synapse/workers/ and nginx/).
# snippet TEMPLATE: TEMPLATE (relative to deploy/) rendered with the settings.
snippet() {
    local name pairs=() names="" key
    while read -r name; do
        [[ -z "$name" || -n "${env_value[$name]+set}" ]] ||
            die "$1 uses \${$name}, which is not a setting of .env.example"
    done < <(grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' "$deploy/$1" | sed 's/^\${\(.*\)}$/\1/' | sort -u)
    for key in "${env_keys[@]}"; do
        pairs+=("$key=${env_value[$key]}")
        names+="\${$key} "
    done
    env -i "${pairs[@]}" envsubst "$names" <"$deploy/$1"
}
if [[ "$(v SYNAPSE_WORKERS)" == on ]]; then
    derived[SYNAPSE_INTERNAL_URL]="http://$(v GATEWAY_IP):$(v GATEWAY_INTERNAL_PORT)"
    derived[PROVISIONER_INTERNAL_URL]="http://$(v GATEWAY_IP):$(v GATEWAY_INTERNAL_PORT)"
    derived[GATEWAY_PROVISIONER_REPLICAS]="    server $(v PROVISIONER_2_HOST):$(v PROVISIONER_2_PORT);"
    derived[SYNAPSE_REPLICATION_LISTENER]="$(snippet synapse/workers/main-listener.yaml.template)"
    derived[SYNAPSE_WORKERS_SHARED]="$(snippet synapse/workers/shared.yaml.template)"
else
    derived[SYNAPSE_INTERNAL_URL]="http://$(v SYNAPSE_HOST):$(v SYNAPSE_PORT)"
    derived[PROVISIONER_INTERNAL_URL]="http://$(v PROVISIONER_HOST):$(v PROVISIONER_PORT)"
    derived[GATEWAY_PROVISIONER_REPLICAS]=""
    derived[SYNAPSE_REPLICATION_LISTENER]=""
    derived[SYNAPSE_WORKERS_SHARED]=""
fi

# ---- Calls: TURN (coturn) ------------------------------------------------------
# Checks, the defaults of the empty TURN settings, and coturn's lines.
[[ -n "$(v TURN_HOST)" ]] || env_value[TURN_HOST]="$(v MATRIX_HOST)"
[[ -n "$(v TURN_REALM)" ]] || env_value[TURN_REALM]="$(v TURN_HOST)"
[[ "$(v TURN_HOST)" =~ ^[A-Za-z0-9.-]+$ ]] || die "TURN_HOST must be a host name or an IPv4 address (no scheme, no port)"
[[ "$(v TURN_REALM)" =~ ^[A-Za-z0-9.-]+$ ]] || die "TURN_REALM must be a name of A-Z a-z 0-9 . -"
for key in TURN_PORT TURNS_PORT TURN_MIN_PORT TURN_MAX_PORT; do
    value="$(v "$key")"
    [[ "$value" =~ ^[0-9]{1,5}$ ]] && ((10#$value >= 1024 && 10#$value <= 65535)) ||
        die "$key must be a port number from 1024 to 65535 (coturn runs without privileges)"
done
turn_min=$((10#$(v TURN_MIN_PORT)))
turn_max=$((10#$(v TURN_MAX_PORT)))
((turn_min <= turn_max)) || die "TURN_MIN_PORT ($turn_min) is above TURN_MAX_PORT ($turn_max)"
((10#$(v TURN_PORT) != 10#$(v TURNS_PORT))) || die "TURN_PORT and TURNS_PORT are the same port"
for key in TURN_PORT TURNS_PORT; do
    ((10#$(v "$key") < turn_min || 10#$(v "$key") > turn_max)) ||
        die "$key ($(v "$key")) is inside the relay range TURN_MIN_PORT-TURN_MAX_PORT"
done
[[ "$(v TURN_USER_LIFETIME)" =~ ^[1-9][0-9]*[smhd]$ ]] ||
    die "TURN_USER_LIFETIME must be a number with s, m, h or d (e.g. 1h; a bare number would be milliseconds to Synapse)"
lines=""
IFS=',' read -ra parts <<<"$(v TURN_SHARED_SECRET)"
derived[TURN_SECRET_FOR_SYNAPSE]="${parts[0]}"
for part in "${parts[@]}"; do
    lines+="${lines:+$'\n'}static-auth-secret=$part"
done
derived[TURN_STATIC_AUTH_SECRET_LINES]="$lines"
lines="# external-ip: none (TURN_EXTERNAL_IP is empty: the host's own addresses)"
if [[ -n "$(v TURN_EXTERNAL_IP)" ]]; then
    lines=""
    IFS=',' read -ra parts <<<"$(v TURN_EXTERNAL_IP)"
    for part in "${parts[@]}"; do
        part="${part//[[:space:]]/}"
        [[ "$part" =~ ^[0-9A-Fa-f:.]+(/[0-9A-Fa-f:.]+)?$ ]] ||
            die "TURN_EXTERNAL_IP: $part is not an address or PUBLIC/PRIVATE"
        lines+="${lines:+$'\n'}external-ip=$part"
    done
fi
derived[TURN_EXTERNAL_IP_LINES]="$lines"
derived[TURN_TOTAL_QUOTA]=$((turn_max - turn_min + 1))

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
# Federation: the gateway's federation paths and /.well-known/matrix/server
# (its copy only when on: off, nobody is to find the server).
render "nginx/gateway.d/federation-$(v FEDERATION).conf.template" nginx/gateway.d/federation.conf 644
if [[ "$(v FEDERATION)" == on ]]; then
    render well-known/matrix/server.template well-known/matrix/server 644
else
    rm -f "$out/well-known/matrix/server"
fi
# SYNAPSE_WORKERS=on: each worker's file (beside homeserver.yaml), Redis's
# configuration, the gateway's routes to the workers and its internal port.
# Rewritten in place, like the others (compose mounts redis.conf by itself).
if [[ "$(v SYNAPSE_WORKERS)" == on ]]; then
    for worker in client federation-reader federation-sender event-persister; do
        render "synapse/workers/$worker.yaml.template" "synapse/workers/$worker.yaml" 644
    done
    # Holds REDIS_PASSWORD; read by the redis image's user.
    render redis/redis.conf.template redis/redis.conf 644
    render nginx/gateway-workers.conf.template nginx/gateway-workers.conf 644
    render nginx/gateway.d/workers.map.template nginx/gateway.d/workers.map 644
else
    rm -f "$out"/nginx/gateway.d/*.map "$out/nginx/gateway-workers.conf"
    rm -rf "$out/synapse/workers" "$out/redis"
fi
# coturn (root in its container, without capabilities: readable by all, like homeserver.yaml).
render coturn/turnserver.conf.template coturn/turnserver.conf 644
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
# DAARION's NATS: the .creds file (a user's key: like the signing key) and CA.
for pair in "$nats_creds:nats.creds" "$nats_ca:nats-ca.pem"; do
    if [[ -n "${pair%:*}" ]]; then
        put "${pair%:*}" "$out/provisioner/${pair##*:}" 644
    else
        rm -f "$out/provisioner/${pair##*:}"
    fi
done

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
