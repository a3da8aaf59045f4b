//! Responses of the gateway's own: small HTML or JSON pages (chosen by `Accept`) that
//! always carry the request id and a reason code, and never internals.

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;

/// What went wrong, in words fit for a user.
fn message(status: u16) -> &'static str {
    match status {
        400 => "The request could not be understood.",
        401 => "You need to sign in to see this.",
        403 => "You are not allowed to see this page.",
        404 => "There is nothing here.",
        405 => "This method is not allowed here.",
        413 => "The request is too large.",
        429 => "Too many requests. Please wait a moment and try again.",
        502 => "The application behind this gateway cannot be reached right now.",
        500 => "Something went wrong on our side.",
        503 => "This service is temporarily unavailable.",
        504 => "The application behind this gateway took too long to answer.",
        _ => "Something went wrong.",
    }
}

fn title(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// True when the client asked for JSON rather than a page: an `Accept` that names a JSON
/// type and not `text/html` (API clients and `fetch()` calls; browsers always list HTML).
pub fn wants_json(accept: Option<&HeaderValue>) -> bool {
    let Some(a) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let a = a.to_ascii_lowercase();
    a.contains("json") && !a.contains("text/html")
}

/// Builds a complete error response: header and body.
pub fn error_response(
    status: u16,
    reason: &str,
    request_id: &str,
    json: bool,
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let msg = message(status);
    let (ctype, body) = if json {
        let v = serde_json::json!({
            "status": status,
            "error": reason,
            "message": msg,
            "request_id": request_id,
        });
        ("application/json", v.to_string())
    } else {
        let t = title(status);
        let rid = html_escape(request_id);
        let reason = html_escape(reason);
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
                 <title>{status} {t}</title>\
                 <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}\
                 code{{background:#f3f3f3;padding:.1rem .3rem}}</style></head>\
                 <body><main><h1>{status} {t}</h1><p>{msg}</p>\
                 <p>Reason: <code>{reason}</code><br>Request id: <code>{rid}</code></p>\
                 </main></body></html>\n"
            ),
        )
    };
    let mut h = ResponseHeader::build(status, Some(8))?;
    h.insert_header(http::header::CONTENT_TYPE, ctype)?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    h.insert_header("x-content-type-options", "nosniff")?;
    h.insert_header(
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    )?;
    h.insert_header("referrer-policy", "no-referrer")?;
    h.insert_header(crate::headers::X_REQUEST_ID, request_id)?;
    Ok((h, Bytes::from(body)))
}

/// A whole response for the small apps served beside the proxy (admin listener, demo
/// provider): the body with its type and length, never cached.
pub fn app_response(status: u16, ctype: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, ctype)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_else(|_| http::Response::new(Vec::new()))
}

/// [`app_response`] with a JSON body.
pub fn app_json(status: u16, v: serde_json::Value) -> http::Response<Vec<u8>> {
    app_response(status, "application/json", v.to_string().into_bytes())
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_only_when_asked_for_without_html() {
        assert!(wants_json(Some(&HeaderValue::from_static(
            "application/json"
        ))));
        assert!(wants_json(Some(&HeaderValue::from_static(
            "application/problem+json"
        ))));
        assert!(!wants_json(Some(&HeaderValue::from_static(
            "text/html,application/xhtml+xml,application/json;q=0.9"
        ))));
        assert!(!wants_json(None));
    }

    #[test]
    fn pages_carry_request_id_and_reason() {
        let (h, b) = error_response(404, "no-route", "abc123", false).unwrap();
        let body = String::from_utf8(b.to_vec()).unwrap();
        assert_eq!(h.status.as_u16(), 404);
        assert!(body.contains("abc123") && body.contains("no-route"));
        assert_eq!(h.headers["x-request-id"], "abc123");
        let (_, b) = error_response(502, "upstream-unreachable", "r1", true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["error"], "upstream-unreachable");
    }

    #[test]
    fn html_is_escaped() {
        let (_, b) = error_response(400, "<x>", "a\"b", false).unwrap();
        let body = String::from_utf8(b.to_vec()).unwrap();
        assert!(!body.contains("<x>") && body.contains("&lt;x&gt;"));
    }
}
