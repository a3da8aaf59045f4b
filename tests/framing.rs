//! Request framing over real sockets: every ambiguous message shape that front-end/back-end
//! pairs have been known to disagree on (request smuggling) is refused with a 400, and the
//! upstream sees no request at all, neither the carrier nor a smuggled one.
//!
//! Most of these are refused by Pingora while it parses the request, before any Portcullis
//! code runs, so those 400s carry no body and no request id. Only status and upstream
//! silence are asserted.

mod common;
use common::*;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup() -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    (echo, gw)
}

/// Writes `bytes` and reads until the gateway closes the connection, so that anything the
/// gateway might take for a second (smuggled) request on the same connection is processed
/// too before the upstream is inspected. Every request here either is refused (Pingora
/// closes after a 400), disables keep-alive by its shape, or says `Connection: close`; if the
/// gateway keeps the connection open anyway, reading stops after 10 s of silence. Returns
/// the statuses of every response, in order.
///
/// The write side is deliberately not half-closed: Pingora takes a client EOF while a
/// request is in flight as the client going away and answers nothing.
async fn exchange(port: u16, bytes: &[u8]) -> Vec<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_statuses(&buf)
}

/// Statuses of the HTTP/1.1 responses in `buf`, following Content-Length bodies.
fn parse_statuses(mut buf: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    while !buf.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(buf) else {
            panic!(
                "unparseable response bytes: {:?}",
                String::from_utf8_lossy(buf)
            );
        };
        statuses.push(resp.code.unwrap_or(0));
        let cl = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        match cl {
            Some(cl) if buf.len() >= n + cl => buf = &buf[n + cl..],
            // No length: the rest is this response's body.
            _ => break,
        }
    }
    statuses
}

/// Sends `bytes` and asserts the gateway answered exactly one 400 and the upstream saw
/// nothing.
async fn assert_refused(shape: &str, bytes: &[u8]) {
    let (echo, gw) = setup().await;
    let statuses = exchange(gw.port, bytes).await;
    let seen = echo.requests();
    assert!(
        seen.iter().all(|r| !r.target.contains("smuggled")),
        "FINDING (smuggling): {shape}: a request hidden in the body reached the upstream \
         (gateway answered {statuses:?}):\n{seen:#?}"
    );
    assert!(
        seen.is_empty(),
        "FINDING: {shape}: the upstream received {} request(s) (gateway answered {statuses:?}); \
         an ambiguously framed request must be refused, not forwarded:\n{seen:#?}",
        seen.len()
    );
    assert_eq!(
        statuses,
        vec![400],
        "{shape}: expected exactly one 400 response"
    );
}

#[tokio::test]
async fn content_length_together_with_chunked_is_refused() {
    // CL.TE / TE.CL: a front end and a back end that pick different headers disagree on
    // where the body ends; the chunked terminator hides a second request inside the body.
    // RFC 9112 §6.1 lets a server either reject this or drop Content-Length, read chunked
    // and close the connection afterwards. Pingora 0.9 does the latter (the request goes
    // upstream with only `Transfer-Encoding: chunked`, the bytes after the terminator are
    // discarded). The gateway's requirement is stricter: refuse, forward nothing. This test
    // fails until that is implemented; the first assertion in `assert_refused` separately
    // catches the serious case, a smuggled request reaching the upstream.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    let req = format!(
        "POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    assert_refused(
        "Content-Length + Transfer-Encoding: chunked",
        req.as_bytes(),
    )
    .await;
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    assert_refused(
        "two Content-Length headers",
        b"POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert_refused(
        "Content-Length list with different values",
        b"POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
    )
    .await;
}

#[tokio::test]
async fn chunked_followed_by_another_transfer_encoding_is_refused() {
    // Chunked must be the final coding; otherwise the body length is unknowable.
    assert_refused(
        "Transfer-Encoding: chunked + Transfer-Encoding: identity",
        b"POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn unknown_transfer_encoding_is_refused() {
    assert_refused(
        "Transfer-Encoding: xchunked",
        b"POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn obs_fold_header_continuation_is_refused() {
    // RFC 9112 §5.2: a server must reject obs-fold (or replace it with spaces); a back end
    // that unfolds differently could see another header, e.g. a Transfer-Encoding.
    assert_refused(
        "obs-fold on an ordinary header",
        b"GET /public HTTP/1.1\r\nHost: h\r\nX-Foo: a\r\n b\r\n\r\n",
    )
    .await;
    assert_refused(
        "obs-fold on Transfer-Encoding",
        b"POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn whitespace_before_the_colon_is_refused() {
    // RFC 9112 §5.1: a server must reject whitespace between a field name and the colon.
    assert_refused(
        "X-Foo : bar",
        b"GET /public HTTP/1.1\r\nHost: h\r\nX-Foo : bar\r\n\r\n",
    )
    .await;
    assert_refused(
        "Transfer-Encoding : chunked",
        b"POST /public HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn nul_in_a_header_value_is_refused() {
    assert_refused(
        "NUL in a header value",
        b"GET /public HTTP/1.1\r\nHost: h\r\nX-Foo: a\0b\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn bare_lf_line_endings_yield_a_well_formed_upstream_request() {
    // Pingora (httparse) accepts bare LF as a line ending (RFC 9112 §2.2 allows a recipient
    // to). That is safe as long as the request is re-serialised: the upstream must get one
    // well-formed request with CRLF framing (hyper, the echo upstream, parses it), the same
    // headers, and the identity header hidden behind a bare LF still stripped.
    let (echo, gw) = setup().await;
    let statuses = exchange(
        gw.port,
        b"GET /public?x=1 HTTP/1.1\nHost: h\nConnection: close\nX-Custom-Thing: keep\nX-Forwarded-User: admin\n\n",
    )
    .await;
    if statuses == vec![400] {
        // Refusing it would be equally fine.
        assert_eq!(echo.count(), 0, "{:#?}", echo.requests());
        return;
    }
    assert_eq!(statuses, vec![200], "bare LF request");
    assert_eq!(echo.count(), 1, "{:#?}", echo.requests());
    let seen = echo.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/public?x=1");
    assert_eq!(seen.header("host"), Some("h"));
    assert_eq!(seen.header("x-custom-thing"), Some("keep"));
    assert!(
        seen.header("x-forwarded-user").is_none(),
        "identity header reached the upstream: {seen:?}"
    );
}

#[tokio::test]
async fn a_bare_lf_inside_a_header_does_not_smuggle_a_header_past_hygiene() {
    // `X-Foo: a\nX-Forwarded-User: admin\r\n` is two header lines to a bare-LF-tolerant
    // parser; whatever Pingora makes of it, the identity header must not arrive.
    let (echo, gw) = setup().await;
    let statuses = exchange(
        gw.port,
        b"GET /public HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Foo: a\nX-Forwarded-User: admin\r\n\r\n",
    )
    .await;
    assert!(
        statuses == vec![200] || statuses == vec![400],
        "unexpected {statuses:?}"
    );
    for seen in echo.requests() {
        assert!(
            seen.headers
                .iter()
                .all(|(n, v)| n != "x-forwarded-user" && !v.contains("admin")),
            "identity header reached the upstream: {seen:?}"
        );
    }
}
