//! Test harness: a real echo upstream, the real `portcullis` binary started from YAML on
//! free ports, and a raw HTTP/1.1 client that can send what well-behaved clients won't.
#![allow(dead_code)]

pub mod browser;
pub mod hook;
pub mod identity;
pub mod oidc_provider;
pub mod redis;
pub mod test_idp;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    /// Header names (lower case) and values, duplicates kept, in order.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An upstream that records every request and answers with it as JSON.
/// `/slow/<ms>` waits that long before answering; `/status/<code>` answers that status.
pub struct Echo {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    pub async fn start() -> Echo {
        Self::start_with(None).await
    }

    /// With `tls`, serves HTTPS with that rustls config.
    pub async fn start_with(tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, std::convert::Infallible>(echo(req, &seen).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Echo { addr, seen, task }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn echo(
    req: hyper::Request<hyper::body::Incoming>,
    seen: &Mutex<Vec<Seen>>,
) -> hyper::Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let record = Seen {
        method: req.method().to_string(),
        target: target.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    seen.lock().unwrap().push(record.clone());
    let mut status = 200;
    if let Some(ms) = target.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = target.strip_prefix("/status/") {
        status = code.parse().unwrap_or(200);
    }
    let body = serde_json::json!({
        "method": record.method,
        "target": record.target,
        "headers": record.headers,
    })
    .to_string();
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A free loopback port. Pingora cannot report the port it bound, so tests pick first.
/// The kernel may hand the same port out again as soon as it is released (so two calls
/// in a row can give one port for a listener and its admin address): a port is handed
/// out once per test process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running `portcullis run` process with its own config directory.
pub struct Gateway {
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The standard top of a test `gateway.yaml`; `extra` adds upstreams and other settings.
pub fn gateway_yaml(port: u16, admin_port: u16, extra: &str) -> String {
    format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\" }}\n\
         threads: 1\n\
         policies: policies/\n\
         {extra}\n"
    )
}

/// `upstreams:` section with one upstream `app` pointing at `addr`.
pub fn upstream_app(addr: SocketAddr) -> String {
    format!("upstreams:\n  app:\n    targets: [\"{addr}\"]\n    read_timeout: 2s\n    connect_timeout: 1s\n")
}

impl Gateway {
    /// Starts a gateway with `extra` appended to the standard `gateway.yaml` and the given
    /// policy files, and waits until its admin listener says it is ready.
    pub async fn start(extra: &str, policies: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let admin_port = free_port();
        Self::start_full(
            &gateway_yaml(port, admin_port, extra),
            port,
            admin_port,
            policies,
        )
        .await
    }

    /// Starts from a complete `gateway.yaml` text.
    pub async fn start_full(
        yaml: &str,
        port: u16,
        admin_port: u16,
        policies: &[(&str, &str)],
    ) -> Gateway {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            yaml,
            port,
            admin_port,
            policies,
        )
        .await
    }

    /// Starts from a complete `gateway.yaml` in `dir`, which may already hold other files
    /// the configuration refers to (secrets, certificates).
    pub async fn start_in(
        dir: tempfile::TempDir,
        yaml: &str,
        port: u16,
        admin_port: u16,
        policies: &[(&str, &str)],
    ) -> Gateway {
        let (mut yaml, mut port, mut admin_port) = (yaml.to_string(), port, admin_port);
        let mut dir = Some(dir);
        // A port picked free can be taken by someone else before the gateway binds it
        // (another test, an outgoing connection): then start again on other ports.
        for attempt in 0.. {
            write_config(dir.as_ref().unwrap().path(), &yaml, policies);
            let log = dir.as_ref().unwrap().path().join("portcullis.log");
            let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .arg("run")
                .arg("--config")
                .arg(dir.as_ref().unwrap().path().join("gateway.yaml"))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut gw = Gateway {
                port,
                admin_port,
                dir: dir.take().unwrap(),
                child,
                log,
            };
            match gw.wait_ready().await {
                Ok(()) => return gw,
                Err(logs) if attempt < 3 && logs.contains("in use") => {
                    let (p, a) = (free_port(), free_port());
                    yaml = yaml
                        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{p}"))
                        .replace(
                            &format!("127.0.0.1:{admin_port}"),
                            &format!("127.0.0.1:{a}"),
                        );
                    (port, admin_port) = (p, a);
                    let _ = gw.child.kill();
                    let _ = gw.child.wait();
                    dir = Some(std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap()));
                }
                Err(logs) => panic!("{logs}"),
            }
        }
        unreachable!()
    }

    /// Waits until the admin listener says ready and the proxy listener accepts; the
    /// failure says why, with the gateway's log.
    async fn wait_ready(&mut self) -> Result<(), String> {
        for _ in 0..500 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("portcullis exited with {status}:\n{}", self.logs()));
            }
            if let Ok(r) = try_send(
                self.admin_port,
                b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await
            {
                if r.status == 200 {
                    // The admin service is up; make sure the proxy listener is too.
                    if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("portcullis did not become ready:\n{}", self.logs()))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends raw bytes to the gateway and reads the whole response (send `Connection: close`).
    pub async fn raw(&self, bytes: &[u8]) -> Response {
        send(self.port, bytes).await
    }

    /// `GET path` with extra headers, `Host: 127.0.0.1:port` and `Connection: close`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers).await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.port
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.raw(req.as_bytes()).await
    }

    /// `GET path` on the admin listener.
    pub async fn admin(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        send(self.admin_port, req.as_bytes()).await
    }

    /// The value of one metric series (exact label set as printed), or None.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let r = self.admin("GET", "/metrics", &[]).await;
        metric_value(&r.text(), series)
    }
}

/// The value of the series `name` whose labels are exactly `labels`, in any order
/// (the Prometheus encoder prints labels sorted by name).
pub fn series_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let mut got: Vec<String> = set.split(',').map(str::to_string).collect();
        got.sort();
        (got == want).then(|| value.trim().parse().ok())?
    })
}

/// Polls `f` (every 20 ms, for at most `limit`) until it returns `Some`: waiting for a
/// condition, never for a fixed time.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Finds `series value` in Prometheus text (labels exactly as printed: sorted by name).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Writes `gateway.yaml` and `policies/*` into `dir`.
pub fn write_config(dir: &Path, yaml: &str, policies: &[(&str, &str)]) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("gateway.yaml"), yaml).unwrap();
    for (name, text) in policies {
        std::fs::write(dir.join("policies").join(name), text).unwrap();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub async fn send(port: u16, bytes: &[u8]) -> Response {
    match try_send(port, bytes).await {
        Ok(r) => r,
        Err(e) => panic!("request to port {port} failed: {e}"),
    }
}

/// Writes `bytes`, reads until the peer closes (or a complete Content-Length body has
/// arrived), and parses the response head with httparse.
pub async fn try_send(port: u16, bytes: &[u8]) -> Result<Response, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(bytes).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = match s.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) if buf.is_empty() => return Err(e.to_string()),
                Err(_) => 0,
            };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse_response(&buf)? {
                let cl = r
                    .header("content-length")
                    .and_then(|v| v.parse::<usize>().ok());
                if cl.is_some_and(|cl| r.body.len() >= cl) {
                    return Ok(r);
                }
            }
        }
        parse_response(&buf)?
            .ok_or_else(|| format!("incomplete response: {:?}", String::from_utf8_lossy(&buf)))
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(Response {
            status: resp.code.unwrap_or(0),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: buf[n..].to_vec(),
        })),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!(
            "bad response ({e}): {:?}",
            String::from_utf8_lossy(buf)
        )),
    }
}

/// A self-signed certificate for `names`, as (cert PEM, key PEM).
pub fn self_signed(names: &[&str]) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

/// A rustls server config from PEM strings.
pub fn rustls_server(cert_pem: &str, key_pem: &str) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(cfg)
}

/// A policy file with a public catch-all to upstream `app`, after `before` routes.
pub fn public_catch_all(before: &str) -> String {
    format!(
        "routes:\n{before}  - name: everything\n    match: {{ path_prefix: / }}\n    upstream: app\n    auth: public\n"
    )
}
