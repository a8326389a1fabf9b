//! The one HTML policy of the service: the subset Matrix clients show (the
//! spec's list of tags), sanitised. Every HTML that crosses between Matrix
//! and DAARION.city goes through it, both ways: agents' rendered markdown
//! into Matrix, and people's `formatted_body` (from any server) out to
//! DAARION.city, which shows it in a browser.

/// `html` with only the Matrix subset left: no script, no style, no event
/// handlers, no images (a remote image would tell its host who reads the
/// room), links only to web, mail and Matrix addresses.
pub fn sanitise(html: &str) -> String {
    let tags = [
        "del",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "p",
        "a",
        "ul",
        "ol",
        "sup",
        "sub",
        "li",
        "b",
        "i",
        "u",
        "strong",
        "em",
        "s",
        "code",
        "hr",
        "br",
        "div",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "caption",
        "pre",
        "span",
        "details",
        "summary",
    ];
    ammonia::Builder::empty()
        .add_tags(tags)
        .add_tag_attributes("a", ["href"])
        .add_tag_attributes("ol", ["start"])
        .add_tag_attributes("code", ["class"])
        .url_schemes(["http", "https", "mailto", "matrix"].into())
        .link_rel(Some("noopener noreferrer"))
        .clean(html)
        .to_string()
}
