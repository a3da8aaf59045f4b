//! The few HTML pages the gateway serves itself: the sign-in chooser, the logout
//! confirmation and the user's sessions. Plain, accessible HTML (landmarks, labels,
//! real buttons), no script; every value is escaped.

use super::{Outcome, Reply, PREFIX};
use crate::responses::html_escape as esc;
use bytes::Bytes;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222;line-height:1.5}\
button{font:inherit;padding:.5rem 1rem;margin:.25rem 0;cursor:pointer}\
input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box}\
.providers button{display:block;width:100%}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem;border-bottom:1px solid #ddd}\
.note{color:#555}";

/// A whole page.
pub fn page(status: u16, title: &str, body: &str) -> Outcome {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head>\
         <body><main>{body}</main></body></html>\n",
        esc(title)
    );
    Outcome::Reply(Reply {
        status,
        headers: Vec::new(),
        content_type: "text/html; charset=utf-8",
        body: Bytes::from(html),
    })
}

/// One provider on the chooser.
pub struct Choice<'a> {
    pub id: &'a str,
    pub name: &'a str,
}

/// The sign-in chooser: a button per provider and, when some provider has domains, an
/// email field for home-realm discovery. Both submit (GET) back to the login endpoint.
pub fn chooser(
    choices: &[Choice<'_>],
    email_field: bool,
    return_to: &str,
    route: Option<&str>,
    signup: bool,
    notice: Option<&str>,
) -> Outcome {
    let hidden = {
        // `via=chooser`: the answer continues a journey already counted as started.
        let mut h = format!(
            "<input type=\"hidden\" name=\"rd\" value=\"{}\">\
             <input type=\"hidden\" name=\"via\" value=\"chooser\">",
            esc(return_to)
        );
        if signup {
            h.push_str("<input type=\"hidden\" name=\"journey\" value=\"signup\">");
        }
        if let Some(r) = route {
            h.push_str(&format!(
                "<input type=\"hidden\" name=\"route\" value=\"{}\">",
                esc(r)
            ));
        }
        h
    };
    let mut body = String::from(if signup {
        "<h1>Create an account</h1>"
    } else {
        "<h1>Sign in</h1>"
    });
    if let Some(n) = notice {
        body.push_str(&format!("<p role=\"alert\">{}</p>", esc(n)));
    }
    if email_field {
        body.push_str(&format!(
            "<form method=\"get\" action=\"{PREFIX}login\" aria-labelledby=\"by-email\">\
             <h2 id=\"by-email\">With your work email</h2>{hidden}\
             <label for=\"email\">Email address</label>\
             <input type=\"email\" id=\"email\" name=\"email\" autocomplete=\"email\" required>\
             <button type=\"submit\">Continue</button></form>"
        ));
    }
    body.push_str(&format!(
        "<form method=\"get\" action=\"{PREFIX}login\" class=\"providers\" aria-labelledby=\"by-provider\">\
         <h2 id=\"by-provider\">{}</h2>{hidden}",
        if email_field {
            "Or choose where you sign in"
        } else {
            "Choose where you sign in"
        }
    ));
    for c in choices {
        body.push_str(&format!(
            "<button type=\"submit\" name=\"provider\" value=\"{}\">{}</button>",
            esc(c.id),
            esc(c.name)
        ));
    }
    body.push_str("</form>");
    page(200, "Sign in", &body)
}

/// The logout confirmation: a POST form with the session's anti-forgery token.
pub fn confirm_logout(csrf: &str, who: &str) -> Outcome {
    page(
        200,
        "Sign out",
        &format!(
            "<h1>Sign out</h1><p>You are signed in as <strong>{}</strong>.</p>\
             <form method=\"post\" action=\"{PREFIX}logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>\
             <p><a href=\"/\">Stay signed in</a></p>",
            esc(who),
            esc(csrf)
        ),
    )
}

/// Shown when there is nothing to sign out of.
pub fn signed_out(home: &str) -> Outcome {
    page(
        200,
        "Signed out",
        &format!(
            "<h1>You are signed out</h1><p><a href=\"{}\">Continue</a></p>",
            esc(home)
        ),
    )
}

/// Login start refused by regulation: a friendly page, 429 with `Retry-After`.
pub fn too_many_attempts(wait: std::time::Duration) -> Outcome {
    let secs = crate::ratelimit::retry_after_secs(wait);
    let when = if secs < 90 {
        format!("{secs} seconds")
    } else {
        format!("{} minutes", secs.div_ceil(60))
    };
    let mut out = page(
        429,
        "Too many sign-in attempts",
        &format!(
            "<h1>Too many sign-in attempts</h1><p>For your security, signing in is paused. \
             Please try again in {when}.</p><p class=\"note\">Reason: <code>login-regulated</code></p>"
        ),
    );
    if let Outcome::Reply(r) = &mut out {
        r.headers
            .push((http::header::RETRY_AFTER, secs.to_string()));
    }
    out
}

/// One row of the sessions page.
pub struct SessionRow {
    pub handle: String,
    pub device: String,
    /// Where the session signed in from (country), when `risk.geoip` is configured.
    pub location: Option<String>,
    pub created: String,
    pub last_seen: String,
    pub current: bool,
}

/// The signed-in user's sessions, each with a button to end it.
pub fn sessions(rows: &[SessionRow], csrf: &str, located: bool) -> Outcome {
    let csrf = esc(csrf);
    let mut body = format!(
        "<h1>Your sessions</h1><p class=\"note\">Devices and browsers signed in to your account. \
         End any you do not recognise.</p><table><thead><tr><th scope=\"col\">Device</th>{}\
         <th scope=\"col\">Signed in</th><th scope=\"col\">Last active</th><th scope=\"col\"><span class=\"note\">Action</span></th></tr></thead><tbody>",
        if located { "<th scope=\"col\">Signed in from</th>" } else { "" }
    );
    for r in rows {
        let label = if r.current {
            format!("{} <strong>(this session)</strong>", esc(&r.device))
        } else {
            esc(&r.device)
        };
        let location = if located {
            format!(
                "<td>{}</td>",
                esc(r.location.as_deref().unwrap_or("Unknown"))
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{label}</td>{location}<td>{}</td><td>{}</td><td>\
             <form method=\"post\" action=\"{PREFIX}sessions\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"action\" value=\"end\">\
             <input type=\"hidden\" name=\"session\" value=\"{}\">\
             <button type=\"submit\" aria-label=\"End session on {}\">End</button></form></td></tr>",
            esc(&r.created),
            esc(&r.last_seen),
            esc(&r.handle),
            esc(&r.device),
        ));
    }
    body.push_str("</tbody></table>");
    if rows.len() > 1 {
        body.push_str(&format!(
            "<form method=\"post\" action=\"{PREFIX}sessions\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"action\" value=\"end-others\">\
             <button type=\"submit\">End all other sessions</button></form>"
        ));
    }
    page(200, "Your sessions", &body)
}

/// A short device summary from a user agent string: browser and system, or "Unknown
/// device". A summary for people, not a parser of record.
pub fn device_summary(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent else {
        return "Unknown device".into();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    let system = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.to_string(),
        (None, Some(s)) => format!("Browser on {s}"),
        (None, None) => "Unknown device".into(),
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC, seconds).
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_summarised() {
        assert_eq!(
            device_summary(Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0")),
            "Edge on Windows"
        );
        assert_eq!(
            device_summary(Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")),
            "Safari on iPhone"
        );
        assert_eq!(
            device_summary(Some(
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
            )),
            "Firefox on Linux"
        );
        assert_eq!(device_summary(None), "Unknown device");
    }

    #[test]
    fn values_on_pages_are_escaped() {
        let Outcome::Reply(r) = chooser(
            &[Choice {
                id: "a",
                name: "<script>",
            }],
            true,
            "/x\"y",
            Some("r"),
            false,
            None,
        ) else {
            panic!("a page")
        };
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(!body.contains("<script>") && body.contains("&lt;script&gt;"));
        assert!(body.contains("/x&quot;y"));
        assert!(body.contains("<label for=\"email\">"));
    }
}
