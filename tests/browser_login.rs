//! The demo's login in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, from Debian's `chromium-driver`; `.ci/run` installs both). It clicks
//! through the development provider's page and lands on the app with the identity
//! headers shown, and page scripts cannot read the session cookie; then it opens the
//! user's sessions page and signs out through the confirmation page.

mod common;

use common::free_port;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child in its own process group, killed with everything it started (chromedriver's
/// Chromium too) when dropped, also when the test panics.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Killed {
    use std::os::unix::process::CommandExt;
    Killed(
        cmd.process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {what} ({e}); install it: apt-get install chromium chromium-driver")
            }),
    )
}

/// A WebDriver session.
struct Driver {
    http: reqwest::Client,
    base: String,
}

impl Driver {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("webdriver request");
        let v: Value = resp.json().await.expect("webdriver json");
        v["value"].clone()
    }

    async fn wait_for(&self, css: &str) -> Option<String> {
        common::eventually(Duration::from_secs(10), || async {
            let v = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            v.as_object()?.values().next()?.as_str().map(str::to_string)
        })
        .await
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }
}

#[tokio::test]
async fn signing_in_to_the_demo_works_in_headless_chromium() {
    let (port, admin_port) = (free_port(), free_port());
    let _demo = spawn(
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args([
            "demo",
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin_port.to_string(),
        ]),
        "portcullis demo",
    );
    let ready = common::eventually(Duration::from_secs(20), || async {
        let v: Value = reqwest::get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "ready").then_some(())
    })
    .await;
    assert!(ready.is_some(), "the demo did not become ready");

    let driver_port = free_port();
    let _chromedriver = spawn(
        Command::new("chromedriver").arg(format!("--port={driver_port}")),
        "chromedriver",
    );
    let http = reqwest::Client::new();
    let up = common::eventually(Duration::from_secs(10), || async {
        http.get(format!("http://127.0.0.1:{driver_port}/status"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(up.is_some(), "chromedriver did not start");
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.path().display())],
        }
    }}});
    let created: Value = http
        .post(format!("http://127.0.0.1:{driver_port}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
        .to_string();
    let d = Driver {
        http: http.clone(),
        base: format!("http://127.0.0.1:{driver_port}/session/{id}"),
    };

    let app = format!("http://127.0.0.1:{port}");
    d.call(
        reqwest::Method::POST,
        "/url",
        Some(json!({"url": format!("{app}/account")})),
    )
    .await;
    let alice = d
        .wait_for("button[value=\"alice\"]")
        .await
        .expect("the development provider's sign-in page");
    let clicked = d
        .call(
            reqwest::Method::POST,
            &format!("/element/{alice}/click"),
            Some(json!({})),
        )
        .await;
    assert!(clicked.is_null(), "click failed: {clicked}");
    let landed = common::eventually(Duration::from_secs(10), || async {
        let url = d.call(reqwest::Method::GET, "/url", None).await;
        (url.as_str() == Some(&format!("{app}/account"))).then_some(())
    })
    .await;
    if landed.is_none() {
        let url = d.call(reqwest::Method::GET, "/url", None).await;
        let text = d.script("return document.body.innerText").await;
        panic!("did not come back to /account: at {url}\n{text}");
    }
    let text = d.script("return document.body.innerText").await;
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("x-auth-user\talice"), "{text}");
    assert!(text.contains("x-auth-groups\tstaff,customers"), "{text}");
    let cookies = d.script("return document.cookie").await;
    assert!(
        !cookies.as_str().unwrap_or_default().contains("portcullis"),
        "HttpOnly: scripts cannot read the session cookie: {cookies}"
    );
    // The browser keeps the session: the staff page opens without another login.
    d.call(
        reqwest::Method::POST,
        "/url",
        Some(json!({"url": format!("{app}/staff")})),
    )
    .await;
    let staff = d.script("return document.body.innerText").await;
    assert!(staff
        .as_str()
        .unwrap_or_default()
        .contains("x-auth-user\talice"));

    // The user's own sessions page lists this browser's session.
    d.call(
        reqwest::Method::POST,
        "/url",
        Some(json!({"url": format!("{app}/.portcullis/sessions")})),
    )
    .await;
    let sessions = d.script("return document.body.innerText").await;
    assert!(
        sessions
            .as_str()
            .unwrap_or_default()
            .contains("(this session)"),
        "{sessions}"
    );
    // Signing out: the confirmation page's button posts the form (CSRF token included),
    // the provider's logout sends the browser back, and the session is gone.
    d.call(
        reqwest::Method::POST,
        "/url",
        Some(json!({"url": format!("{app}/.portcullis/logout")})),
    )
    .await;
    let sign_out = d
        .wait_for("form[action=\"/.portcullis/logout\"] button")
        .await
        .expect("the sign-out confirmation page");
    let clicked = d
        .call(
            reqwest::Method::POST,
            &format!("/element/{sign_out}/click"),
            Some(json!({})),
        )
        .await;
    assert!(clicked.is_null(), "click failed: {clicked}");
    let home = common::eventually(Duration::from_secs(10), || async {
        let url = d.call(reqwest::Method::GET, "/url", None).await;
        (url.as_str() == Some(&format!("{app}/"))).then_some(())
    })
    .await;
    if home.is_none() {
        let url = d.call(reqwest::Method::GET, "/url", None).await;
        let text = d.script("return document.body.innerText").await;
        panic!("sign-out did not land on the home page: at {url}\n{text}");
    }
    d.call(
        reqwest::Method::POST,
        "/url",
        Some(json!({"url": format!("{app}/account")})),
    )
    .await;
    assert!(
        d.wait_for("button[value=\"alice\"]").await.is_some(),
        "signed out: /account asks for a login again"
    );
    d.call(reqwest::Method::DELETE, "", None).await;
}
