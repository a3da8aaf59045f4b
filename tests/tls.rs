//! TLS on both sides: an HTTPS listener from PEM files, and HTTPS to an upstream with a
//! private CA, verification on by default, SNI checked, and `verify: false` as a warned-of
//! escape hatch.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Writes `(cert, key)` PEM into `dir` and returns their absolute paths.
fn write_pem(dir: &Path, stem: &str, pem: &(String, String)) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pem.0).unwrap();
    std::fs::write(&key, &pem.1).unwrap();
    (cert, key)
}

/// A rustls client that trusts exactly `cert_pem` (ring provider, like the harness server).
fn client_trusting(cert_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Sends `GET path` over TLS (SNI `server_name`) and reads the whole response.
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    server_name: &str,
    path: &str,
) -> Response {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the gateway");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A peer that closes without close_notify still sent a whole response.
                Err(_) if !buf.is_empty() => break,
                Err(e) => panic!("reading the TLS response: {e}"),
            }
            if let Some(r) = parse(&buf) {
                let cl = r
                    .header("content-length")
                    .and_then(|v| v.parse::<usize>().ok());
                if cl.is_some_and(|cl| r.body.len() >= cl) {
                    return r;
                }
            }
        }
        parse(&buf)
            .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&buf)))
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("HTTPS request timed out")
}

/// The harness's response parser; a malformed response fails the test.
fn parse(buf: &[u8]) -> Option<Response> {
    parse_response(buf).expect("a valid HTTP response")
}

/// `upstreams:` with one TLS upstream `app` at `addr`; `tls` is the inside of `tls: { }`.
fn tls_upstream(addr: SocketAddr, tls: &str) -> String {
    format!(
        "upstreams:\n  app:\n    targets: [\"{addr}\"]\n    read_timeout: 2s\n    connect_timeout: 1s\n    tls: {{ {tls} }}\n"
    )
}

/// An HTTPS echo upstream with a self-signed certificate for `upstream.test`, and the
/// absolute path of that certificate (to use as the CA).
async fn https_echo(dir: &Path) -> (Echo, PathBuf) {
    let pem = self_signed(&["upstream.test"]);
    let (cert, _key) = write_pem(dir, "upstream", &pem);
    let echo = Echo::start_with(Some(rustls_server(&pem.0, &pem.1))).await;
    (echo, cert)
}

async fn gateway_to(upstreams: &str) -> Gateway {
    Gateway::start(upstreams, &[("a.yaml", &public_catch_all(""))]).await
}

fn check(config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test]
async fn tls_listener_serves_https_and_forwards_proto_https() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed(&["localhost", "127.0.0.1"]);
    let (cert, key) = write_pem(dir.path(), "listener", &pem);
    let port = free_port();
    let admin_port = free_port();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}]\n\
         public_url: \"https://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\" }}\n\
         threads: 1\n\
         policies: policies/\n\
         {}\n",
        cert.display(),
        key.display(),
        upstream_app(echo.addr)
    );
    let gw = Gateway::start_full(
        &yaml,
        port,
        admin_port,
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;

    let client = client_trusting(&pem.0);
    let r = https_get(&client, gw.port, "localhost", "/hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = echo.last();
    assert_eq!(seen.target, "/hello");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    let rid = r
        .header("x-request-id")
        .expect("x-request-id on the response");
    assert_eq!(seen.header("x-request-id"), Some(rid));
}

#[tokio::test]
async fn tls_upstream_with_its_ca_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, ca) = https_echo(dir.path()).await;
    let gw = gateway_to(&tls_upstream(
        echo.addr,
        &format!("sni: upstream.test, ca: \"{}\"", ca.display()),
    ))
    .await;

    let r = gw.get("/over-tls", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["target"], "/over-tls");
    assert_eq!(echo.last().target, "/over-tls");
}

#[tokio::test]
async fn tls_upstream_with_unknown_issuer_is_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, _ca) = https_echo(dir.path()).await;
    let gw = gateway_to(&tls_upstream(echo.addr, "sni: upstream.test")).await;

    let r = gw.get("/x", &[("Accept", "application/json")]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream-tls-failed", "{}", r.text());
    assert_eq!(
        echo.count(),
        0,
        "a request was sent over an unverified connection"
    );
    let html = gw.get("/x", &[]).await;
    assert_eq!(html.status, 502);
    assert!(
        html.text().contains("upstream-tls-failed"),
        "{}",
        html.text()
    );
}

#[tokio::test]
async fn tls_upstream_with_wrong_sni_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, ca) = https_echo(dir.path()).await;
    let gw = gateway_to(&tls_upstream(
        echo.addr,
        &format!("sni: other.test, ca: \"{}\"", ca.display()),
    ))
    .await;

    let r = gw.get("/x", &[("Accept", "application/json")]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream-tls-failed", "{}", r.text());
    assert_eq!(echo.count(), 0, "a request was sent to the wrong name");
}

#[tokio::test]
async fn tls_upstream_without_verification_is_reached_and_check_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, _ca) = https_echo(dir.path()).await;
    let gw = gateway_to(&tls_upstream(
        echo.addr,
        "sni: upstream.test, verify: false",
    ))
    .await;

    let r = gw.get("/unverified", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echo.last().target, "/unverified");

    let out = check(&gw.dir.path().join("gateway.yaml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("verification is off"), "stderr: {stderr}");
    assert!(
        stderr.contains("upstreams.app.tls.verify"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn tls_upstream_with_its_ca_passes_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, ca) = https_echo(dir.path()).await;
    let gw = gateway_to(&format!(
        "{}    health_check: {{ interval: 500ms, timeout: 500ms }}\n",
        tls_upstream(
            echo.addr,
            &format!("sni: upstream.test, ca: \"{}\"", ca.display())
        )
    ))
    .await;

    // Two failed checks in a row mark a target down; with checks every 500 ms that
    // happens within about 1.5 s. Watch for 4 s (several rounds): it must stay healthy.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let v = gw.admin("GET", "/readyz", &[]).await.json();
        assert_eq!(
            v["upstreams"]["app"]["healthy"],
            1,
            "a reachable TLS upstream with a configured CA was marked unhealthy: {v}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.get("/x", &[]).await.status, 200);
}

/// A listener whose certificate or key cannot be used is a configuration error reported
/// by `check` and `run` (which exits), never a process left running without its listener.
#[test]
fn unusable_listener_certificates_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, _key_a) = self_signed(&["a.test"]);
    let (_cert_b, key_b) = self_signed(&["b.test"]);
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("cert-a.pem"), cert_a).unwrap();
    std::fs::write(dir.path().join("key-b.pem"), key_b).unwrap();
    let port = free_port();
    let cases = [
        (
            "garbage.pem",
            "key-b.pem",
            "listen[0].tls.cert",
            "no certificate",
        ),
        (
            "cert-a.pem",
            "garbage.pem",
            "listen[0].tls.key",
            "no usable private key",
        ),
        (
            "cert-a.pem",
            "key-b.pem",
            "listen[0].tls.key",
            "does not fit",
        ),
    ];
    for (cert, key, path, msg) in cases {
        let yaml = format!(
            "listen: [{{ address: \"127.0.0.1:{port}\", tls: {{ cert: {cert}, key: {key} }} }}]\n\
             public_url: \"https://127.0.0.1:{port}\"\n\
             admin: {{ address: \"127.0.0.1:{}\" }}\n",
            free_port()
        );
        write_config(
            dir.path(),
            &yaml,
            &[(
                "a.yaml",
                "routes:\n  - name: all\n    match: { path_prefix: / }\n    auth: deny\n",
            )],
        );
        for cmd in ["check", "run"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args([cmd, "--config"])
                .arg(dir.path().join("gateway.yaml"))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} {cert}/{key}: {stderr}");
            assert!(
                stderr.contains(path) && stderr.contains(msg),
                "{cmd} {cert}/{key}: {stderr}"
            );
        }
    }
}
