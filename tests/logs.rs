//! Logs: the access log (one line per request: request id, route, status, latency,
//! decision, reason code, client address, user pseudonym) in `logging.format` text or
//! json, never a cookie, code, state or token; `logging.access_log: false` turns it
//! off; `logging.level` sets the gateway's own lines.

mod common;

use common::browser::Browser;
use common::identity::{session_yaml, with_test_idp, IdpGateway, POLICY};
use common::{eventually, free_port, gateway_yaml, Gateway};
use serde_json::Value;
use std::time::Duration;

async fn gateway(logging: &str) -> IdpGateway {
    with_test_idp(&format!("{}{logging}", session_yaml(None)), "", POLICY).await
}

/// Signs in through `/account` and returns the browser and the callback URL it used.
async fn signed_in(s: &IdpGateway) -> (Browser, String) {
    let b = Browser::new();
    let mut page = b.get(&s.gw.url("/account")).await;
    let mut callback = String::new();
    for _ in 0..10 {
        let Some(next) = page.is_redirect().then(|| page.location()).flatten() else {
            break;
        };
        if next.contains("/.portcullis/callback") {
            callback = next.clone();
        }
        page = b.get(&next).await;
    }
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert!(!callback.is_empty());
    (b, callback)
}

/// The JSON access lines logged so far.
fn access_lines(gw: &Gateway) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["log"] == "access")
        .collect()
}

/// Waits for the access line of the request `id`.
async fn access_line(gw: &Gateway, id: &str) -> Value {
    eventually(Duration::from_secs(10), || async {
        access_lines(gw).into_iter().find(|v| v["request_id"] == id)
    })
    .await
    .unwrap_or_else(|| panic!("no access line for {id}:\n{}", gw.logs()))
}

#[tokio::test]
async fn json_access_lines_tell_the_request_and_its_decision_and_no_secret() {
    let s = gateway("logging: { format: json }\n").await;
    let (b, callback) = signed_in(&s).await;

    // A signed-in request let through.
    let page = b.get(&s.gw.url("/account/orders?card=4111")).await;
    assert_eq!(page.status, 200);
    let id = page.header("x-request-id").unwrap().to_string();
    let line = access_line(&s.gw, &id).await;
    assert_eq!(line["route"], "account", "{line}");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert_eq!(line["decision"], "allow");
    assert!(line["reason"].is_null());
    assert_eq!(line["client_ip"], "127.0.0.1");
    let user = line["user"].as_str().unwrap();
    assert!(
        user.len() == 16 && user.bytes().all(|b| b.is_ascii_hexdigit()),
        "a pseudonym, not the user: {user}"
    );
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["ts"].as_str().unwrap().ends_with('Z'));

    // Not signed in: sent to log in, with the reason.
    let anon = s.gw.get("/account", &[("Accept", "text/html")]).await;
    assert_eq!(anon.status, 302);
    let line = access_line(&s.gw, anon.header("x-request-id").unwrap()).await;
    assert_eq!(
        (&line["decision"], &line["reason"], &line["status"]),
        (
            &Value::from("login"),
            &Value::from("user-unauthenticated"),
            &Value::from(302)
        ),
        "{line}"
    );
    assert!(line["user"].is_null());

    // Refused by policy, and refused before routing.
    let staff = b.get(&s.gw.url("/staff")).await;
    let line = access_line(&s.gw, staff.header("x-request-id").unwrap()).await;
    assert_eq!(line["route"], "staff");
    assert_eq!(line["status"], staff.status);
    let bad =
        s.gw.raw(b"GET /a/%2e%2e/%00 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
    assert_eq!(bad.status, 400);
    let line = access_line(&s.gw, bad.header("x-request-id").unwrap()).await;
    assert_eq!(line["decision"], "rejected", "{line}");
    assert_eq!(line["route"], "none");
    assert!(line["reason"].is_string());

    // The callback is logged as an endpoint request; its code and state are not.
    let logs = s.gw.logs();
    let query = url::Url::parse(&callback).unwrap();
    for (k, v) in query.query_pairs() {
        if k == "code" || k == "state" {
            assert!(!logs.contains(&*v), "the {k} reached the logs");
        }
    }
    let cookies = b.cookie_header(&s.gw.url("/")).unwrap();
    for c in cookies.split("; ") {
        let value = c.split_once('=').unwrap().1;
        assert!(
            value.len() < 8 || !logs.contains(value),
            "a cookie reached the logs: {c}"
        );
    }
    assert!(!logs.contains("4111"), "no query string in the logs");
    assert!(access_lines(&s.gw)
        .iter()
        .any(|l| l["route"] == "portcullis-endpoints" && l["decision"] == "endpoint"));
    // Every line, the gateway's own included, is a JSON object.
    for l in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["ts"].is_string() && (v["log"] == "access" || v["level"].is_string()),
            "{l}"
        );
    }
}

#[tokio::test]
async fn text_access_lines_are_one_readable_line_per_request() {
    let s = gateway("").await;
    let r =
        s.gw.get("/account", &[("Accept", "application/json")])
            .await;
    assert_eq!(r.status, 401);
    let id = r.header("x-request-id").unwrap().to_string();
    let line = eventually(Duration::from_secs(10), || async {
        s.gw.logs()
            .lines()
            .find(|l| l.contains(&format!(" access {id} ")))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no access line:\n{}", s.gw.logs()));
    assert!(
        line.contains(&format!(" access {id} GET route=account status=401 "))
            && line.contains(" decision=login reason=user-unauthenticated client=127.0.0.1 user=-"),
        "{line}"
    );
}

#[tokio::test]
async fn the_access_log_can_be_turned_off() {
    let s = gateway("logging: { format: json, access_log: false }\n").await;
    let r = s.gw.get("/", &[]).await;
    let id = r.header("x-request-id").unwrap().to_string();
    // A later request's effect (its metric) shows the first one was long recorded.
    assert!(s.gw.get("/account", &[]).await.status >= 300);
    let seen = eventually(Duration::from_secs(5), || async {
        s.gw.metric("portcullis_requests_total{route=\"account\",status_class=\"4xx\"}")
            .await
    })
    .await;
    assert!(seen.is_some());
    assert!(access_lines(&s.gw).is_empty(), "{}", s.gw.logs());
    assert!(!s.gw.logs().contains(&id));
}

/// `logging.level: warn` leaves out the gateway's info lines (with `RUST_LOG` unset;
/// the test harness otherwise sets it).
#[tokio::test]
async fn the_level_from_the_config_leaves_out_lower_lines() {
    for (level, expect_info) in [("warn", false), ("info", true)] {
        let (port, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        common::write_config(
            dir.path(),
            &gateway_yaml(
                port,
                admin,
                &format!("logging: {{ level: {level}, format: json }}\nupstreams:\n  app: {{ targets: [\"127.0.0.1:9\"] }}\n"),
            ),
            &[("p.yaml", &common::public_catch_all(""))],
        );
        let log = dir.path().join("out.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("gateway.yaml"))
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let ready = eventually(Duration::from_secs(20), || async {
            let r = common::try_send(
                admin,
                b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await
            .ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        assert!(ready.is_some(), "{text}");
        let infos = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["level"] == "INFO")
            .count();
        assert_eq!(infos > 0, expect_info, "level {level}:\n{text}");
    }
}

/// `portcullis check` of the standard gateway.yaml with `extra`: (success, stderr).
fn check(extra: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        &gateway_yaml(
            18080,
            19090,
            &format!("{extra}upstreams:\n  app: {{ targets: [\"127.0.0.1:9\"] }}\n"),
        ),
        &[("p.yaml", &common::public_catch_all(""))],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn logging_settings_are_checked() {
    let (ok, err) = check("logging: { level: info, format: json, access: true }\n");
    assert!(!ok);
    assert!(err.contains("logging") && err.contains("access"), "{err}");
    let (ok, err) = check("logging: { level: loud, format: xml }\n");
    assert!(!ok);
    assert!(
        err.contains("logging.level: \"loud\": error, warn, info, debug, trace or off")
            && err.contains("logging.format: \"xml\": text or json"),
        "both errors at once: {err}"
    );
    let (ok, err) = check("logging: { level: debug, format: json, access_log: false }\n");
    assert!(ok, "{err}");
}
