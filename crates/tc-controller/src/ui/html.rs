//! HTML output: the one escaping helper, the page layout and small formatters.
//!
//! Pages are plain Rust functions writing into a `String`. Every value that did not come from
//! this module's own literals goes through [`esc`] (text and attribute values alike: it escapes
//! `&`, `<`, `>`, `"` and `'`), so a host name such as `<script>` or a label value with quotes
//! renders as text. Attribute values are always double-quoted.

use std::fmt::{self, Display, Write};

use tc_api::{Condition, Role, Timestamp};

use super::assets;
use super::session::UiSession;

/// Text made safe for HTML text and double- or single-quoted attribute values.
pub struct Esc<'a>(pub &'a str);

/// Escapes `text` for HTML (see the module documentation).
pub fn esc(text: &str) -> Esc<'_> {
    Esc(text)
}

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Percent-encodes `text` for a path segment or a query value (then escaped with [`esc`] as any
/// attribute value).
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The navigation entries: (path, title).
const NAV: &[(&str, &str)] = &[
    ("/ui", "Overview"),
    ("/ui/clients", "Clients"),
    ("/ui/groups", "Groups"),
    ("/ui/packages", "Packages"),
    ("/ui/tasks", "Tasks"),
    ("/ui/events", "Events"),
];

/// A whole page: head (stylesheet, htmx), navigation with the user and sign-out, `body`.
pub fn page(title: &str, current: &str, session: Option<&UiSession>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"htmx-config\" content='{{\"includeIndicatorStyles\":false,\"allowEval\":false,\"allowScriptTags\":false}}'>\
         <title>{} · thinfleet</title>\
         <link rel=\"stylesheet\" href=\"{}\">\
         <script src=\"{}\" defer></script></head><body>",
        esc(title),
        assets::CSS.path(),
        assets::HTMX.path(),
    );
    out.push_str("<header><nav><span class=\"brand\">thinfleet</span>");
    if let Some(session) = session {
        for (path, name) in NAV {
            let here = if *path == current {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(out, "<a href=\"{path}\"{here}>{name}</a>");
        }
        let _ = write!(
            out,
            "<span class=\"user\">{} ({})</span>\
             <form method=\"post\" action=\"/ui/signout\" class=\"inline\">{}\
             <button type=\"submit\">Sign out</button></form>",
            esc(&session.identity.name),
            session.identity.role,
            csrf_field(session),
        );
    }
    out.push_str("</nav></header><main>");
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

/// The hidden CSRF field every form of a signed-in page carries.
pub fn csrf_field(session: &UiSession) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
}

/// A region that htmx reloads from `src` every few seconds (`src` answers the region alone to
/// htmx requests). Without JavaScript it is plain content.
pub fn live(id: &str, src: &str, content: &str) -> String {
    format!(
        "<div id=\"{id}\" hx-get=\"{}\" hx-trigger=\"every 4s\" hx-swap=\"outerHTML\">{content}</div>",
        esc(src)
    )
}

/// `3 min ago`, `2 h ago`, `never`.
pub fn ago(time: Option<Timestamp>, now: Timestamp) -> String {
    let Some(time) = time else {
        return "never".into();
    };
    let seconds = now.since(time).as_secs();
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// `1.5 GiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A table of conditions.
pub fn conditions(out: &mut String, conditions: &[Condition]) {
    if conditions.is_empty() {
        out.push_str("<p class=\"muted\">No conditions yet.</p>");
        return;
    }
    out.push_str("<ul class=\"conditions\">");
    for condition in conditions {
        let status = format!("{:?}", condition.status);
        // A rollout that stopped is bad unless it stopped because it is done (or an operator
        // paused it: a warning).
        let class = match (
            condition.type_.as_str(),
            status.as_str(),
            condition.reason.as_str(),
        ) {
            ("Progressing", "False", "Complete") => "good",
            ("Progressing", "False", "Paused" | "StepPaused") => "warn",
            ("Degraded", "True", _) | ("Progressing", "False", _) => "bad",
            (_, "True", _) => "good",
            _ => "muted",
        };
        let _ = write!(
            out,
            "<li class=\"{class}\"><b>{}</b>={} <i>{}</i> {}</li>",
            esc(&condition.type_),
            esc(&status),
            esc(&condition.reason),
            esc(&condition.message)
        );
    }
    out.push_str("</ul>");
}

/// A rollout progress bar: `done` of `total`, as a native `<progress>` (no inline style, which
/// the Content-Security-Policy forbids).
pub fn progress(done: u32, total: u32) -> String {
    format!(
        "<progress max=\"{}\" value=\"{}\">{done}/{total}</progress> {done}/{total}",
        total.max(1),
        done.min(total)
    )
}

/// Whether `role` may see buttons for an action needing `needed`.
pub fn may(role: Role, needed: Option<Role>) -> bool {
    needed.is_some_and(|needed| role >= needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        let text = format!("{}", esc("<script>alert('x')</script> & \"q\""));
        assert_eq!(
            text,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(url("a b/<c>&d"), "a%20b%2F%3Cc%3E%26d");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
