"""Synapse module: `m.login.password` sign-in checked by matrix-provisioner.

Element X and other clients without single sign-on sign in with a password.
This module hands each such attempt (user identifier or email third-party
identifier) to matrix-provisioner's `POST /v1/sso/password`, which checks it
against DAARION Auth, creates the Matrix account on the spot when needed, and
answers with the Matrix user id. See README.md beside this package and section
11 of the service's contract.

Load it in homeserver.yaml:

    modules:
      - module: matrix_provisioner_synapse.PasswordAuthProvider
        config: {service_url: "http://127.0.0.1:7030", secret_path: /etc/synapse/password-module-secret}
    password_config: {enabled: true}
"""

from ._provider import (
    AccountDeactivated,
    PasswordAuthProvider,
    PasswordModuleConfig,
    SignInUnavailable,
    TooManyAttempts,
)

__all__ = [
    "AccountDeactivated",
    "PasswordAuthProvider",
    "PasswordModuleConfig",
    "SignInUnavailable",
    "TooManyAttempts",
]
__version__ = "0.1.0"
