//! The small HTML pages a browser sees during "Continue with DAARION", in
//! Ukrainian or English (by `Accept-Language`): self-contained (no outside
//! URL, no script), never cached, never framed, sending no referrer.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Uk,
    En,
}

impl Lang {
    /// The preferred of Ukrainian and English in `Accept-Language`
    /// (English when neither is named). Russian counts as Ukrainian: the
    /// people of DAARION.city read it.
    pub fn of(req: &HttpRequest) -> Lang {
        let header = req
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Lang::from_header(header)
    }

    fn from_header(header: &str) -> Lang {
        let mut best = (Lang::En, 0.0f32);
        for part in header.split(',') {
            let mut pieces = part.trim().split(';');
            let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = pieces
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            let lang = match primary {
                "uk" | "ru" => Lang::Uk,
                "en" => Lang::En,
                _ => continue,
            };
            if q > best.1 {
                best = (lang, q);
            }
        }
        best.0
    }
}

/// What a page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// On the way elsewhere (the body of a redirect, for browsers that do
    /// not follow it on their own).
    Continue,
    Expired,
    Refused,
    Deactivated,
    Unavailable,
    Failed,
    BadRequest,
    NotConfigured,
}

impl Page {
    fn text(self, lang: Lang) -> (&'static str, &'static str) {
        use Lang::*;
        use Page::*;
        match (self, lang) {
            (Continue, Uk) => ("Продовжуємо…", "Зачекайте, переходимо далі."),
            (Continue, En) => ("Continuing…", "One moment, taking you on."),
            (Expired, Uk) => (
                "Час входу минув",
                "Цей вхід застарів, уже використаний або почався в іншому браузері. Почніть вхід у Matrix знову.",
            ),
            (Expired, En) => (
                "Sign-in expired",
                "This sign-in has expired, was already used, or was started in another browser. Please start signing in to Matrix again.",
            ),
            (Refused, Uk) => (
                "DAARION не підтвердив вхід",
                "Вхід через DAARION скасовано або не підтверджено. Почніть вхід знову.",
            ),
            (Refused, En) => (
                "DAARION did not sign you in",
                "Signing in with DAARION was cancelled or could not be confirmed. Please start again.",
            ),
            (Deactivated, Uk) => (
                "Обліковий запис деактивовано",
                "Ваш обліковий запис Matrix деактивовано. Якщо це помилка, зверніться до підтримки DAARION.",
            ),
            (Deactivated, En) => (
                "Account deactivated",
                "Your Matrix account is deactivated. If this is a mistake, please contact DAARION support.",
            ),
            (Unavailable, Uk) => (
                "Спробуйте трохи згодом",
                "Сервер Matrix зараз недоступний. Спробуйте увійти за хвилину.",
            ),
            (Unavailable, En) => (
                "Please try again shortly",
                "The Matrix server cannot be reached right now. Please try signing in again in a minute.",
            ),
            (Failed, Uk) => (
                "Не вдалося створити обліковий запис",
                "Ваш обліковий запис Matrix не вдалося створити. Адміністратори бачать причину.",
            ),
            (Failed, En) => (
                "Your account could not be created",
                "Your Matrix account could not be created. The administrators can see why.",
            ),
            (BadRequest, Uk) => (
                "Хибне посилання для входу",
                "Це посилання для входу недійсне. Почніть вхід зі сторінки Matrix.",
            ),
            (BadRequest, En) => (
                "Invalid sign-in link",
                "This sign-in link is not valid. Please start from the Matrix sign-in page.",
            ),
            (NotConfigured, Uk) => (
                "Вхід через DAARION не налаштовано",
                "На цьому сервері вхід через DAARION ще не ввімкнено.",
            ),
            (NotConfigured, En) => (
                "Sign-in with DAARION is not set up",
                "Signing in with DAARION is not switched on for this server.",
            ),
        }
    }

    fn link_text(lang: Lang) -> &'static str {
        match lang {
            Lang::Uk => "Продовжити",
            Lang::En => "Continue",
        }
    }

    /// The page as HTML; `link` (already a full URL) is offered as a button.
    pub fn html(self, lang: Lang, link: Option<&str>) -> String {
        let (title, body) = self.text(lang);
        let code = match lang {
            Lang::Uk => "uk",
            Lang::En => "en",
        };
        let link = link
            .map(|href| {
                format!(
                    "<p><a href=\"{}\">{}</a></p>",
                    escape(href),
                    Page::link_text(lang)
                )
            })
            .unwrap_or_default();
        format!(
            "<!doctype html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · DAARION</title><style>body{{font-family:system-ui,sans-serif;\
             max-width:32rem;margin:4rem auto;padding:0 1rem;color:#1b1b1f}}h1{{font-size:1.4rem}}\
             a{{display:inline-block;padding:.5rem 1rem;background:#1b1b1f;color:#fff;\
             border-radius:.4rem;text-decoration:none}}</style></head>\
             <body><h1>{title}</h1><p>{body}</p>{link}</body></html>\n"
        )
    }

    /// This page as a response with `status`.
    pub fn respond(self, req: &HttpRequest, status: StatusCode) -> HttpResponse {
        let html = self.html(Lang::of(req), None);
        page_headers(HttpResponse::build(status)).body(html)
    }
}

/// The headers every page carries.
pub fn page_headers(mut builder: HttpResponseBuilder) -> HttpResponseBuilder {
    builder
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'",
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    builder
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_follows_accept_language() {
        assert_eq!(Lang::from_header("uk-UA,uk;q=0.9,en;q=0.8"), Lang::Uk);
        assert_eq!(Lang::from_header("en-US,en;q=0.9,uk;q=0.8"), Lang::En);
        assert_eq!(Lang::from_header("de-DE,uk;q=0.5"), Lang::Uk);
        assert_eq!(Lang::from_header("ru"), Lang::Uk);
        assert_eq!(Lang::from_header("fr"), Lang::En);
        assert_eq!(Lang::from_header(""), Lang::En);
        assert_eq!(Lang::from_header("en;q=0.2, uk;q=0.7"), Lang::Uk);
    }

    #[test]
    fn pages_are_self_contained_and_escape_links() {
        for page in [
            Page::Continue,
            Page::Expired,
            Page::Refused,
            Page::Deactivated,
            Page::Unavailable,
            Page::Failed,
            Page::BadRequest,
            Page::NotConfigured,
        ] {
            for lang in [Lang::Uk, Lang::En] {
                let html = page.html(lang, None);
                assert!(!html.contains("http"), "{page:?} {lang:?} links outside");
                assert!(!html.contains("<script"), "{page:?}");
            }
        }
        let html = Page::Continue.html(Lang::En, Some("https://h/cb?a=1&b=\"x\""));
        assert!(html.contains("href=\"https://h/cb?a=1&amp;b=&quot;x&quot;\""));
        assert!(Page::Deactivated
            .html(Lang::Uk, None)
            .contains("деактивовано"));
    }
}
