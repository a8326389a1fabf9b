//! Values that must never be printed: [`Secret`] and URLs that may carry a
//! password ([`redact_url`]). The bottom of the module graph: every layer,
//! the pure rules included, may use it, and it uses nothing of ours.

use std::fmt;

/// A secret string. `Debug` and `Display` print a placeholder; the value is
/// only reachable through [`Secret::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Query parameters whose values are credentials (libpq's and the usual
/// ones), blanked wherever they appear.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "passfile", "secret", "token"];

/// Blanks every credential a URL-like string may carry, whatever its shape:
/// `postgres://u:pw@h:99999/db` → `postgres://u:***@h:99999/db`. It does not
/// parse the URL (a malformed URL must not come out whole, passwords
/// included, in the error that says it is malformed): the user information
/// is everything before the last `@` of the authority, and its password
/// everything after its first `:`. Credential query parameters are blanked
/// too. Text without a scheme is treated as starting with the authority.
pub fn redact_url(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    // The authority ends at the first '/', '?' or '#' after the last '@'
    // that comes before any of them... except that a password may itself
    // hold '/', '?' or '#'; so take the last '@' before the path proper.
    let authority_end = authority_end(rest);
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    format!("{scheme}{authority}{}", redact_query(tail))
}

/// Where the authority of `rest` (the URL after `scheme://`) ends: at the
/// first `/`, `?` or `#` after the last `@` (a password may contain those
/// characters), or at the first of them when there is no `@`.
fn authority_end(rest: &str) -> usize {
    let search_from = rest.rfind('@').map_or(0, |at| at + 1);
    rest[search_from..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |i| search_from + i)
}

fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_string();
    };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(f) => query.split_at(f),
        None => (query, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_PARAMS.contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}{}{fragment}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn passwords_are_blanked_in_urls_that_parse() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact_url("postgresql://u:pw@h:5432/db?sslmode=require"),
            "postgresql://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://data/mp.db"), "sqlite://data/mp.db");
    }

    #[test]
    fn passwords_are_blanked_in_urls_that_do_not_parse() {
        for (raw, want) in [
            // The port is out of range: url::Url refuses it.
            ("postgres://u:pw@h:99999/db", "postgres://u:***@h:99999/db"),
            // Characters a URL may not hold, in the password.
            ("postgres://u:p@ss w#rd/x@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p?w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pw@[::1/db", "postgres://u:***@[::1/db"),
            // No scheme separator at all.
            ("u:pw@h/db", "u:***@h/db"),
            ("postgres:u:pw@h", "postgres:***@h"),
            // Credentials as query parameters.
            (
                "postgres://h/db?user=u&password=pw&sslpassword=x#f",
                "postgres://h/db?user=u&password=***&sslpassword=***#f",
            ),
            ("nonsense", "nonsense"),
            ("", ""),
        ] {
            let got = redact_url(raw);
            assert_eq!(got, want, "{raw}");
            assert!(!got.contains("pw") && !got.contains("ss w"), "{got}");
        }
    }
}
