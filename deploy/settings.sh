# deploy/settings.sh: what render.sh and new-env.sh know about the settings
# of deploy/.env.example, sourced by both. The settings themselves are in
# .env.example; this file only says which are secrets and which may be empty.

# Secrets: new-env.sh makes a fresh one for each that is empty; render.sh
# checks their form (16 or more of A-Z a-z 0-9 . _ ~ -).
SECRET_KEYS=(
    POSTGRES_PASSWORD SYNAPSE_DB_PASSWORD PROVISIONER_DB_PASSWORD
    SYNAPSE_REGISTRATION_SECRET SYNAPSE_MACAROON_SECRET_KEY SYNAPSE_FORM_SECRET
    SYNAPSE_JWT_SECRET OIDC_CLIENT_SECRET APPSERVICE_AS_TOKEN APPSERVICE_HS_TOKEN
    AUTH_WEBHOOK_SECRET CITY_WEBHOOK_SECRET ADMIN_API_TOKEN PASSWORD_MODULE_SECRET
)

# Secrets that are comma-separated lists (rotation: new key first).
LIST_SECRET_KEYS=(AUTH_WEBHOOK_SECRET CITY_WEBHOOK_SECRET)

# Settings that may be empty (left out, or the service's default).
OPTIONAL_KEYS=(
    AUTH_LOGIN_URL AUTH_JWKS_URL AUTH_JWT_SECRET AUTH_JWT_ISSUER AUTH_JWT_AUDIENCE
    AUTH_API_URL AUTH_API_TOKEN CITY_API_URL CITY_API_TOKEN CITY_EVENTS_URL
    OIDC_SIGNING_KEY_PATH GATEWAY_ADMIN_ALLOW LOCALPART_SOURCES ADOPT_LOCALPART_TEMPLATE
)

# ---- Calls: TURN (coturn) ----
# TURN_SHARED_SECRET: coturn accepts each key, Synapse signs with the first.
SECRET_KEYS+=(TURN_SHARED_SECRET)
LIST_SECRET_KEYS+=(TURN_SHARED_SECRET)
# Empty: TURN_HOST is MATRIX_HOST, TURN_REALM the TURN host; no external-ip.
OPTIONAL_KEYS+=(TURN_HOST TURN_REALM TURN_EXTERNAL_IP)
# DAARION's NATS: off unless NATS_URL is set; credentials come from DAARION.
OPTIONAL_KEYS+=(NATS_URL NATS_CREDS_PATH NATS_USER NATS_PASSWORD NATS_TOKEN NATS_TLS_CA_PATH)
# Monitoring (deploy/prometheus/): no Alertmanager unless one is named.
OPTIONAL_KEYS+=(ALERTMANAGER_TARGETS)

# in_list WORD LIST...: whether WORD is one of LIST.
in_list() {
    local word="$1" item
    shift
    for item in "$@"; do [[ "$item" == "$word" ]] && return 0; done
    return 1
}

# fresh_secret: 32 random bytes as hex.
fresh_secret() {
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

# SYNAPSE_WORKERS (deploy/README.md, "More than one process"): Redis's password.
SECRET_KEYS+=(REDIS_PASSWORD)
