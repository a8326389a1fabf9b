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
    OtherBrowser,
    TooMany,
    Cancelled,
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
            (OtherBrowser, Uk) => (
                "Вхід зупинено",
                "Цей вхід у Matrix почався в іншому браузері, тому ми його зупинили. Якщо ви щойно не входили в Matrix, можливо, хтось надіслав вам це посилання: нічого робити не треба. Якщо входили, почніть знову в цьому браузері.",
            ),
            (OtherBrowser, En) => (
                "Sign-in stopped",
                "This Matrix sign-in was started in another browser, so it has been stopped. If you were not signing in to Matrix just now, someone may have sent you this link: there is nothing you need to do. If you were, please start again in this browser.",
            ),
            (TooMany, Uk) => (
                "Забагато спроб входу",
                "З вашої мережі зараз почато забагато входів. Спробуйте за хвилину.",
            ),
            (TooMany, En) => (
                "Too many sign-ins",
                "Too many sign-ins have been started from your network. Please try again in a minute.",
            ),
            (Cancelled, Uk) => (
                "Вхід скасовано",
                "Ви не входили в Matrix. Якщо в DAARION увійшов хтось інший, вийдіть з DAARION і почніть вхід у Matrix знову.",
            ),
            (Cancelled, En) => (
                "Sign-in cancelled",
                "You were not signed in to Matrix. If someone else is signed in to DAARION in this browser, sign out of DAARION and start signing in to Matrix again.",
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
        let link = link
            .map(|href| {
                format!(
                    "<p><a href=\"{}\">{}</a></p>",
                    escape(href),
                    Page::link_text(lang)
                )
            })
            .unwrap_or_default();
        document(lang, title, &format!("<p>{body}</p>{link}"))
    }

    /// This page as a response with `status`.
    pub fn respond(self, req: &HttpRequest, status: StatusCode) -> HttpResponse {
        let html = self.html(Lang::of(req), None);
        page_headers(HttpResponse::build(status)).body(html)
    }
}

/// "Continuing…" with a page that goes on to `location` by itself (a
/// `Refresh` of 0 seconds, and a link for browsers that do not). `Location`
/// is sent too, for programs; browsers ignore it on a `200`.
pub fn onward_page(lang: Lang, location: &str) -> HttpResponse {
    let (title, body) = Page::Continue.text(lang);
    let refresh = format!("0; url={location}");
    let head = format!(
        "<meta http-equiv=\"refresh\" content=\"{}\">",
        escape(&refresh)
    );
    let content = format!(
        "<p>{body}</p><p><a href=\"{}\">{}</a></p>",
        escape(location),
        Page::link_text(lang)
    );
    let html = document_with_head(lang, title, &head, &content);
    page_headers(HttpResponse::Ok())
        .insert_header((header::REFRESH, refresh))
        .insert_header((header::LOCATION, location.to_string()))
        .body(html)
}

/// The headers every page carries.
pub fn page_headers(builder: HttpResponseBuilder) -> HttpResponseBuilder {
    headers_with_form_action(builder, "'none'")
}

/// The page's headers, its forms allowed to go to `form_action` only (the
/// browser checks redirects after a form's submission against it too).
fn headers_with_form_action(
    mut builder: HttpResponseBuilder,
    form_action: &str,
) -> HttpResponseBuilder {
    builder
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            format!(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
                 form-action {form_action}"
            ),
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    builder
}

/// "Sign in to Matrix as …?": whom DAARION signed in, before any code is
/// issued, with "Continue" and "Not me" posting `fields` to `action` (our
/// own origin; the browser then goes on to `client_origin`, Synapse's).
pub fn confirm_page(
    lang: Lang,
    matrix_id: &str,
    display_name: Option<&str>,
    action: &str,
    fields: &[(&str, &str)],
    client_origin: &str,
) -> HttpResponse {
    let (title, body, yes, no) = match lang {
        Lang::Uk => (
            "Увійти в Matrix?",
            "DAARION підтвердив, що це ви. Увійти в Matrix як:",
            "Продовжити",
            "Це не я",
        ),
        Lang::En => (
            "Sign in to Matrix?",
            "DAARION confirmed it is you. Sign in to Matrix as:",
            "Continue",
            "Not me",
        ),
    };
    let who = match display_name.filter(|n| !n.trim().is_empty()) {
        Some(name) => format!(
            "<p class=\"who\"><strong>{}</strong><br><code>{}</code></p>",
            escape(name),
            escape(matrix_id)
        ),
        None => format!(
            "<p class=\"who\"><strong><code>{}</code></strong></p>",
            escape(matrix_id)
        ),
    };
    let inputs = hidden_inputs(fields);
    let form = format!(
        "<form method=\"post\" action=\"{}\">{inputs}\
         <button type=\"submit\" id=\"continue\" name=\"answer\" value=\"continue\">{yes}</button> \
         <button type=\"submit\" id=\"cancel\" name=\"answer\" value=\"cancel\" class=\"no\">{no}</button>\
         </form>",
        escape(action)
    );
    let html = document(lang, title, &format!("<p>{body}</p>{who}{form}"));
    let form_action = format!("'self' {client_origin}");
    headers_with_form_action(HttpResponse::Ok(), &form_action).body(html)
}

/// What the own sign-in form says above its fields after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormNote {
    WrongPassword,
    /// Too many failed attempts; try again in this many seconds.
    Limited(u64),
    DaarionUnavailable,
}

/// The service's own "Sign in with DAARION" page (when DAARION Auth has no
/// hosted page): email and password, posted with `fields` (the sign-in's
/// state and the browser's form token) to `action`, our own origin only.
pub fn sign_in_form(
    lang: Lang,
    status: StatusCode,
    action: &str,
    fields: &[(&str, &str)],
    email: &str,
    note: Option<FormNote>,
) -> HttpResponse {
    let (title, intro, email_label, password_label, submit) = match lang {
        Lang::Uk => (
            "Увійти через DAARION",
            "Увійдіть з електронною поштою та паролем DAARION, щоб продовжити в Matrix.",
            "Електронна пошта",
            "Пароль",
            "Увійти",
        ),
        Lang::En => (
            "Sign in with DAARION",
            "Sign in with your DAARION email and password to continue to Matrix.",
            "Email",
            "Password",
            "Sign in",
        ),
    };
    let note = note.map(|note| {
        let text = match (note, lang) {
            (FormNote::WrongPassword, Lang::Uk) => {
                "Неправильна електронна пошта або пароль.".to_string()
            }
            (FormNote::WrongPassword, Lang::En) => "Wrong email or password.".to_string(),
            (FormNote::Limited(seconds), Lang::Uk) => format!(
                "Забагато невдалих спроб. Спробуйте знову за {} хв.",
                seconds.div_ceil(60)
            ),
            (FormNote::Limited(seconds), Lang::En) => format!(
                "Too many failed attempts. Please try again in {} min.",
                seconds.div_ceil(60)
            ),
            (FormNote::DaarionUnavailable, Lang::Uk) => {
                "DAARION зараз не може перевірити пароль. Спробуйте за хвилину.".to_string()
            }
            (FormNote::DaarionUnavailable, Lang::En) => {
                "DAARION cannot check passwords right now. Please try again in a minute."
                    .to_string()
            }
        };
        format!(
            "<p class=\"note\" id=\"note\" role=\"alert\">{}</p>",
            escape(&text)
        )
    });
    let inputs = hidden_inputs(fields);
    let form = format!(
        "<form method=\"post\" action=\"{action}\">{inputs}\
         <p><label for=\"email\">{email_label}</label><br>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required \
         value=\"{email}\"></p>\
         <p><label for=\"password\">{password_label}</label><br>\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required></p>\
         <button type=\"submit\" id=\"sign_in\">{submit}</button></form>",
        action = escape(action),
        email = escape(email),
    );
    let html = document(
        lang,
        title,
        &format!("<p>{intro}</p>{}{form}", note.unwrap_or_default()),
    );
    headers_with_form_action(HttpResponse::build(status), "'self'").body(html)
}

/// `fields` as hidden inputs of a form, escaped.
fn hidden_inputs(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect()
}

/// A whole page around `content` (already HTML).
fn document(lang: Lang, title: &str, content: &str) -> String {
    document_with_head(lang, title, "", content)
}

/// [`document`] with `head` (already HTML) added to its head.
fn document_with_head(lang: Lang, title: &str, head: &str, content: &str) -> String {
    let code = match lang {
        Lang::Uk => "uk",
        Lang::En => "en",
    };
    format!(
        "<!doctype html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}\
         <title>{title} · DAARION</title><style>body{{font-family:system-ui,sans-serif;\
         max-width:32rem;margin:4rem auto;padding:0 1rem;color:#1b1b1f}}h1{{font-size:1.4rem}}\
         a,button{{display:inline-block;padding:.5rem 1rem;background:#1b1b1f;color:#fff;\
         border:0;border-radius:.4rem;text-decoration:none;font:inherit;cursor:pointer}}\
         button.no{{background:#e4e4e9;color:#1b1b1f}}.who{{font-size:1.1rem}}\
         input{{font:inherit;padding:.4rem;width:100%;box-sizing:border-box}}\
         .note{{background:#fde2e1;padding:.5rem;border-radius:.4rem}}</style></head>\
         <body><h1>{title}</h1>{content}</body></html>\n"
    )
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

    /// The body and `Content-Security-Policy` of a page built by a
    /// function that answers a whole response.
    async fn body_and_csp(response: HttpResponse) -> (String, String) {
        let csp = response
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .expect("a Content-Security-Policy")
            .to_str()
            .unwrap()
            .to_string();
        let body = actix_web::body::to_bytes(response.into_body()).await;
        (String::from_utf8(body.unwrap().to_vec()).unwrap(), csp)
    }

    #[actix_web::test]
    async fn pages_are_self_contained_and_escape_links() {
        for page in [
            Page::Continue,
            Page::Expired,
            Page::OtherBrowser,
            Page::TooMany,
            Page::Cancelled,
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

    #[actix_web::test]
    async fn the_own_sign_in_form_speaks_the_browser_s_language_and_escapes_what_it_echoes() {
        let fields = [("state", "s\"1<"), ("form", "f&2")];
        let form = |lang, note| {
            sign_in_form(
                lang,
                StatusCode::UNAUTHORIZED,
                "https://m.test/v1/sso/sign-in",
                &fields,
                "\"><script>x</script>@example.test",
                note,
            )
        };
        let response = form(Lang::En, None);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let (html, _) = body_and_csp(response).await;
        assert!(html.contains("<html lang=\"en\">"), "{html}");
        assert!(html.contains("Sign in with DAARION"), "{html}");
        assert!(!html.contains("id=\"note\""), "no note before an attempt");
        assert!(html.contains("action=\"https://m.test/v1/sso/sign-in\""));
        assert!(
            html.contains("name=\"state\" value=\"s&quot;1&lt;\""),
            "{html}"
        );
        assert!(html.contains("name=\"form\" value=\"f&amp;2\""), "{html}");
        assert!(
            html.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;@example.test\""),
            "the address is kept, escaped: {html}"
        );
        assert!(!html.contains("<script"), "{html}");
        // The password field is never filled in.
        let password = html.split("type=\"password\"").nth(1).unwrap();
        assert!(!password[..password.find('>').unwrap()].contains("value="));

        let (html, _) = body_and_csp(form(Lang::Uk, None)).await;
        assert!(html.contains("<html lang=\"uk\">"), "{html}");
        assert!(html.contains("Увійти через DAARION"), "{html}");
        for (note, uk, en) in [
            (
                FormNote::WrongPassword,
                "Неправильна електронна пошта або пароль.",
                "Wrong email or password.",
            ),
            // Seconds are rounded up to whole minutes.
            (
                FormNote::Limited(61),
                "Забагато невдалих спроб. Спробуйте знову за 2 хв.",
                "Too many failed attempts. Please try again in 2 min.",
            ),
            (
                FormNote::Limited(1),
                "Спробуйте знову за 1 хв.",
                "Please try again in 1 min.",
            ),
            (
                FormNote::DaarionUnavailable,
                "DAARION зараз не може перевірити пароль.",
                "DAARION cannot check passwords right now.",
            ),
        ] {
            for (lang, text) in [(Lang::Uk, uk), (Lang::En, en)] {
                let (html, _) = body_and_csp(form(lang, Some(note))).await;
                let shown = html
                    .split("<p class=\"note\" id=\"note\" role=\"alert\">")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{note:?} {lang:?}: no note in {html}"));
                let shown = &shown[..shown.find("</p>").unwrap()];
                assert!(shown.contains(text), "{note:?} {lang:?}: {shown}");
            }
        }
    }

    #[actix_web::test]
    async fn the_confirmation_names_the_person_escaped_and_posts_only_to_us_and_the_client() {
        let response = confirm_page(
            Lang::En,
            "@olena:daarion.space",
            Some("<script>Олена</script>"),
            "https://m.test/v1/sso/continue",
            &[("state", "s\"1"), ("proof", "p")],
            "https://matrix.test",
        );
        let csp = response
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.ends_with("form-action 'self' https://matrix.test"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let body = actix_web::body::to_bytes(response.into_body()).await;
        let html = String::from_utf8(body.unwrap().to_vec()).unwrap();
        assert!(
            html.contains("&lt;script&gt;Олена&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("@olena:daarion.space"));
        assert!(html.contains("name=\"state\" value=\"s&quot;1\""), "{html}");
        assert!(html.contains("value=\"continue\"") && html.contains("value=\"cancel\""));
        assert!(html.contains("action=\"https://m.test/v1/sso/continue\""));
    }
}
