//! `portcullis demo`: the gateway on its embedded defaults in front of a small demo app
//! that shows the headers it receives, all in one process. For trying Portcullis out,
//! not for production.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use std::path::{Path, PathBuf};

/// The demo's `gateway.yaml`; `{PORT}`, `{ADMIN_PORT}`, `{APP_PORT}` and `{IDP_PORT}`
/// are filled in.
pub const DEMO_GATEWAY: &str = include_str!("../deploy/demo/gateway.yaml");
/// The demo's route policy.
pub const DEMO_POLICY: &str = include_str!("../deploy/demo/policies/demo.yaml");

/// Writes the demo configuration into `dir` and returns the path of its `gateway.yaml`.
pub fn write_config(
    dir: &Path,
    ports: &DemoPorts,
    client_secret: &str,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("policies"))?;
    let gw = DEMO_GATEWAY
        .replace("{PORT}", &ports.gateway.to_string())
        .replace("{ADMIN_PORT}", &ports.admin.to_string())
        .replace("{APP_PORT}", &ports.app.to_string())
        .replace("{IDP_PORT}", &ports.idp.to_string());
    write_private(&dir.join("client-secret"), client_secret)?;
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, gw)?;
    std::fs::write(dir.join("policies").join("demo.yaml"), DEMO_POLICY)?;
    Ok(path)
}

/// The demo's ports.
pub struct DemoPorts {
    pub gateway: u16,
    pub admin: u16,
    pub app: u16,
    pub idp: u16,
}

/// The OAuth client the demo registers at its development provider.
pub const DEMO_CLIENT_ID: &str = "portcullis-demo";

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// A free loopback port, found by binding port 0 (Pingora cannot report the port it got).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The demo upstream app as a Pingora service on `127.0.0.1:port`.
pub fn app_service(port: u16) -> Service<HttpServer<DemoApp>> {
    let mut s = Service::new("demo app".to_string(), HttpServer::new_app(DemoApp));
    s.threads = Some(1);
    s.add_tcp(&format!("127.0.0.1:{port}"));
    s
}

/// Answers every request with a page listing the request headers it received.
pub struct DemoApp;

#[async_trait]
impl ServeHttp for DemoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let mut rows = String::new();
        let mut names: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        for name in names {
            for v in req.headers.get_all(name) {
                let mark = if name.starts_with("x-forwarded-")
                    || name.starts_with("x-auth-")
                    || name == "x-portcullis-assertion"
                    || name == "x-request-id"
                {
                    " class=\"gw\""
                } else {
                    ""
                };
                rows.push_str(&format!(
                    "<tr{mark}><th>{}</th><td>{}</td></tr>",
                    escape(name),
                    escape(&String::from_utf8_lossy(v.as_bytes()))
                ));
            }
        }
        let target = escape(&String::from_utf8_lossy(req.raw_path()));
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Portcullis demo app</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}}\
             table{{border-collapse:collapse;width:100%}}th{{text-align:left;padding:.2rem 1rem .2rem .3rem;white-space:nowrap;vertical-align:top}}\
             td{{word-break:break-all;padding:.2rem .3rem}}tr.gw{{background:#e8f4e8}}code{{background:#f3f3f3}}</style></head>\
             <body><h1>Portcullis demo app</h1>\
             <p>This page is the <em>upstream</em> application. Portcullis received your request, \
             normalised it and forwarded it here as <code>{method} {target}</code>.</p>\
             <p>Sign in: <a href=\"/account\">/account</a> (login required; shows the identity headers) · \
             <a href=\"/staff\">/staff</a> (group <code>staff</code> only) · \
             <a href=\"/mfa\">/mfa</a> (needs the one-time-code login) · \
             <a href=\"/.portcullis/userinfo\">/.portcullis/userinfo</a> (your session as JSON) · \
             <a href=\"/.portcullis/sessions\">/.portcullis/sessions</a> (your sessions; end any) · \
             <a href=\"/.portcullis/logout\">/.portcullis/logout</a> (sign out).</p>\
             <p>Try: <a href=\"/\">/</a> (public) · <a href=\"/public/hello\">/public/hello</a> (public) · \
             <a href=\"/admin\">/admin</a> (denied by policy) · <a href=\"/public/%2e%2e/admin\">/public/%2e%2e/admin</a> \
             (normalised to /admin, still denied) · <a href=\"/nowhere/..%2fadmin\">/nowhere/..%2fadmin</a> (refused: 400).</p>\
             <p>Headers this app received (highlighted: set by Portcullis). Any identity header a client sends, \
             such as <code>X-Forwarded-User</code> or <code>X_Auth_User</code>, is stripped before it gets here:</p>\
             <table>{rows}</table></body></html>",
            method = escape(req.method.as_str()),
        );
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body.into_bytes())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
