#!/usr/bin/env bash
# synapse-config.sh — owns the configuration of a throwaway local Synapse used by
# tests and benchmarks: writes DIR/homeserver.yaml, DIR/log.config and
# DIR/signing.key (sqlite database, media store and log all live inside DIR).
#
# Usage:   REGISTRATION_SECRET=... scripts/synapse-config.sh DIR PORT
# Env:     REGISTRATION_SECRET  required; Synapse's registration_shared_secret
#          SERVER_NAME          default localhost (one DIR = one server name)
#          JWT_SECRET           optional; enables jwt_config (HS256, subject_claim sub)
#          OIDC_PROVIDERS       optional; "idp_id=issuer_url,…": one oidc_providers entry
#                               each for a matrix-provisioner at issuer_url (client
#                               synapse, secret OIDC_CLIENT_SECRET, back-channel logout,
#                               never creating or taking over accounts)
#          OIDC_CLIENT_SECRET   required with OIDC_PROVIDERS
#          SSO_CLIENT_WHITELIST optional; comma-separated sso.client_whitelist
#          APPSERVICE_FILES     optional; comma-separated registration files for
#                               app_service_config_files (matrix-provisioner's, printed
#                               by `matrix-provisioner appservice-registration`)
#          PASSWORD_MODULE_URL  optional; matrix-provisioner's base URL: loads the
#                               password module of synapse-module/ (Element X's
#                               m.login.password through POST /v1/sso/password) and sets
#                               password_config.enabled
#          PASSWORD_MODULE_SECRET required with PASSWORD_MODULE_URL; the service's
#                               PASSWORD_MODULE_SECRET, written to DIR/password-module-secret
#                               (mode 600)
#          PASSWORD_MODULE_TIMEOUT optional; the module's timeout_seconds (default 10)
#          BCRYPT_ROUNDS        default 12 (tests pass 4)
#          RELAX_RATELIMITS     0 (default, Synapse's limits) or 1 (generous rc_* limits)
#          SYNAPSE_LOG_LEVEL    default INFO (root level of DIR/homeserver.log)
#          MP_CACHE             passed on to synapse-venv.sh
# Re-running on an existing DIR rewrites the config and keeps the signing key,
# macaroon_secret_key and form_secret. The listener binds 127.0.0.1:PORT only.
set -euo pipefail

usage() { echo "usage: REGISTRATION_SECRET=... $0 DIR PORT" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
dir_arg="$1"
port="$2"
if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || (( 10#$port < 1 || 10#$port > 65535 )); then
    echo "synapse-config: PORT must be a number in 1..65535, got '$port'" >&2; exit 2
fi
port=$((10#$port))
if [[ -z "${REGISTRATION_SECRET:-}" ]]; then
    echo "synapse-config: REGISTRATION_SECRET is required" >&2; exit 2
fi
: "${SERVER_NAME:=localhost}"
: "${BCRYPT_ROUNDS:=12}"
: "${RELAX_RATELIMITS:=0}"
: "${SYNAPSE_LOG_LEVEL:=INFO}"
[[ "$BCRYPT_ROUNDS" =~ ^[0-9]+$ ]] || { echo "synapse-config: BCRYPT_ROUNDS must be a number" >&2; exit 2; }
[[ "$RELAX_RATELIMITS" == 0 || "$RELAX_RATELIMITS" == 1 ]] || {
    echo "synapse-config: RELAX_RATELIMITS must be 0 or 1" >&2; exit 2; }

scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$("$scripts/synapse-venv.sh" | tail -n 1)"
py="$venv/bin/python"

mkdir -p "$dir_arg"
dir="$(cd "$dir_arg" && pwd)"

# Let Synapse generate fresh secrets and a signing key the first time only.
gen=""
if [[ ! -f "$dir/homeserver.yaml" || ! -f "$dir/signing.key" ]]; then
    gen="$(mktemp -d "$dir/.generate.XXXXXX")"
    trap 'rm -rf "$gen"' EXIT
    "$py" -m synapse.app.homeserver \
        --server-name "$SERVER_NAME" \
        --config-path "$gen/homeserver.yaml" \
        --data-directory "$gen" \
        --generate-config --report-stats=no >/dev/null
fi

export SC_DIR="$dir" SC_PORT="$port" SC_GEN="$gen" SERVER_NAME BCRYPT_ROUNDS \
    RELAX_RATELIMITS SYNAPSE_LOG_LEVEL REGISTRATION_SECRET
export JWT_SECRET="${JWT_SECRET:-}" OIDC_PROVIDERS="${OIDC_PROVIDERS:-}" \
    OIDC_CLIENT_SECRET="${OIDC_CLIENT_SECRET:-}" SSO_CLIENT_WHITELIST="${SSO_CLIENT_WHITELIST:-}" \
    APPSERVICE_FILES="${APPSERVICE_FILES:-}" PASSWORD_MODULE_URL="${PASSWORD_MODULE_URL:-}" \
    PASSWORD_MODULE_SECRET="${PASSWORD_MODULE_SECRET:-}" \
    PASSWORD_MODULE_TIMEOUT="${PASSWORD_MODULE_TIMEOUT:-}"
"$py" - <<'EOF'
import glob
import os
import shutil

import yaml

d = os.environ["SC_DIR"]
port = int(os.environ["SC_PORT"])
gen = os.environ["SC_GEN"]
server_name = os.environ["SERVER_NAME"]


def load(path):
    with open(path, encoding="utf8") as f:
        return yaml.safe_load(f) or {}


def write(path, data, mode=0o600):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf8") as f:
        f.write("# Written by scripts/synapse-config.sh; rewritten on every run.\n")
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=False)
    os.replace(tmp, path)


hs_path = os.path.join(d, "homeserver.yaml")
old = load(hs_path) if os.path.exists(hs_path) else {}
generated = load(os.path.join(gen, "homeserver.yaml")) if gen else {}

key_path = os.path.join(d, "signing.key")
if not os.path.exists(key_path):
    (generated_key,) = glob.glob(os.path.join(gen, "*.signing.key"))
    shutil.move(generated_key, key_path)


def secret(name):
    value = old.get(name) or generated.get(name)
    if not value:
        raise SystemExit(f"synapse-config: no {name} in existing or generated config")
    return value


log_config_path = os.path.join(d, "log.config")
write(
    log_config_path,
    {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s"
                " - %(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": os.path.join(d, "homeserver.log"),
                "encoding": "utf8",
            }
        },
        "loggers": {
            # DEBUG here would log access tokens.
            "synapse.storage.SQL": {"level": "WARNING"},
        },
        "root": {"level": os.environ["SYNAPSE_LOG_LEVEL"], "handlers": ["file"]},
        "disable_existing_loggers": False,
    },
    0o644,
)

config = {
    "server_name": server_name,
    "public_baseurl": f"http://127.0.0.1:{port}/",
    "listeners": [
        {
            "port": port,
            "type": "http",
            "tls": False,
            "bind_addresses": ["127.0.0.1"],
            "x_forwarded": True,
            # "client" also serves /_synapse/admin and /_matrix/media.
            "resources": [{"names": ["client"], "compress": False}],
        }
    ],
    "database": {
        "name": "sqlite3",
        "args": {"database": os.path.join(d, "homeserver.db")},
    },
    "log_config": log_config_path,
    "media_store_path": os.path.join(d, "media_store"),
    "max_upload_size": "50M",
    "signing_key_path": key_path,
    "macaroon_secret_key": secret("macaroon_secret_key"),
    "form_secret": secret("form_secret"),
    "registration_shared_secret": os.environ["REGISTRATION_SECRET"],
    "enable_registration": False,
    "bcrypt_rounds": int(os.environ["BCRYPT_ROUNDS"]),
    "report_stats": False,
    "trusted_key_servers": [],
    "suppress_key_server_warning": True,
}

jwt_secret = os.environ.get("JWT_SECRET", "")
if jwt_secret:
    config["jwt_config"] = {
        "enabled": True,
        "secret": jwt_secret,
        "algorithm": "HS256",
        "subject_claim": "sub",
    }

providers = [p for p in os.environ.get("OIDC_PROVIDERS", "").split(",") if p.strip()]
if providers:
    client_secret = os.environ.get("OIDC_CLIENT_SECRET", "")
    if not client_secret:
        raise SystemExit("synapse-config: OIDC_PROVIDERS needs OIDC_CLIENT_SECRET")
    entries = []
    for provider in providers:
        idp_id, issuer = provider.strip().split("=", 1)
        entries.append(
            {
                "idp_id": idp_id,
                "idp_name": "DAARION",
                "idp_brand": "daarion",
                "issuer": issuer,
                "client_id": "synapse",
                "client_secret": client_secret,
                "client_auth_method": "client_secret_basic",
                "scopes": ["openid", "profile"],
                # Everything is plain http on 127.0.0.1 here.
                "skip_verification": True,
                "allow_existing_users": False,
                "enable_registration": False,
                "backchannel_logout_enabled": True,
                "user_mapping_provider": {
                    "config": {
                        "subject_template": "{{ user.sub }}",
                        "localpart_template": "{{ user.preferred_username }}",
                        "display_name_template": "{{ user.name }}",
                    }
                },
            }
        )
    config["oidc_providers"] = entries
whitelist = [w for w in os.environ.get("SSO_CLIENT_WHITELIST", "").split(",") if w.strip()]
if whitelist:
    config["sso"] = {"client_whitelist": whitelist}

appservices = [f for f in os.environ.get("APPSERVICE_FILES", "").split(",") if f.strip()]
if appservices:
    config["app_service_config_files"] = [os.path.abspath(f) for f in appservices]
    # Synapse lists no room in its directory unless a rule allows who asks;
    # the application services' bots publish the public City Rooms.
    rules = []
    for f in appservices:
        with open(f) as reg:
            sender = yaml.safe_load(reg)["sender_localpart"]
        rules.append({"user_id": f"@{sender}:{server_name}", "action": "allow"})
    config["room_list_publication_rules"] = rules

module_url = os.environ.get("PASSWORD_MODULE_URL", "")
module_secret = os.environ.get("PASSWORD_MODULE_SECRET", "")
module_timeout = os.environ.get("PASSWORD_MODULE_TIMEOUT", "")
secret_path = os.path.join(d, "password-module-secret")
if module_url or module_secret:
    if not (module_url and module_secret):
        raise SystemExit(
            "synapse-config: PASSWORD_MODULE_URL and PASSWORD_MODULE_SECRET go together"
        )
    if not module_url.startswith(("http://", "https://")):
        # Synapse's own message would not say what is wrong with it.
        raise SystemExit("synapse-config: PASSWORD_MODULE_URL must be an http:// or https:// URL")
    fd = os.open(secret_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf8") as f:
        f.write(module_secret + "\n")
    os.replace(secret_path + ".tmp", secret_path)
    module_config = {"service_url": module_url, "secret_path": secret_path}
    if module_timeout:
        try:
            module_config["timeout_seconds"] = float(module_timeout)
        except ValueError:
            raise SystemExit("synapse-config: PASSWORD_MODULE_TIMEOUT must be a number")
    config["modules"] = [
        {"module": "matrix_provisioner_synapse.PasswordAuthProvider", "config": module_config}
    ]
    config["password_config"] = {"enabled": True}
elif os.path.exists(secret_path):
    os.remove(secret_path)

if os.environ["RELAX_RATELIMITS"] == "1":
    def lots():  # a fresh dict each time, so the yaml has no anchors/aliases
        return {"per_second": 10000, "burst_count": 100000}

    config.update(
        {
            "rc_message": lots(),
            "rc_registration": lots(),
            "rc_registration_token_validity": lots(),
            "rc_login": {
                "address": lots(),
                "account": lots(),
                "failed_attempts": lots(),
            },
            "rc_admin_redaction": lots(),
            "rc_joins": {"local": lots(), "remote": lots()},
            "rc_joins_per_room": lots(),
            "rc_3pid_validation": lots(),
            "rc_invites": {"per_room": lots(), "per_user": lots(), "per_issuer": lots()},
            "rc_third_party_invite": lots(),
            "rc_media_create": lots(),
            "rc_presence": {"per_user": lots()},
            "rc_delayed_event_mgmt": lots(),
            "rc_room_creation": lots(),
            "rc_reports": lots(),
            "rc_user_directory": lots(),
            "rc_profile": lots(),
            "rc_key_requests": lots(),
        }
    )

write(hs_path, config)
EOF

# Let Synapse itself validate what was written.
if ! out="$("$py" -m synapse.config -c "$dir/homeserver.yaml" 2>&1)"; then
    echo "synapse-config: Synapse rejects $dir/homeserver.yaml:" >&2
    echo "$out" >&2
    exit 1
fi
echo "$dir/homeserver.yaml"
