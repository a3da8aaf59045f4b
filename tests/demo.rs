//! `portcullis demo`, the README's first command: the gateway, a demo app and the
//! built-in development identity provider in one process. A newcomer can sign in as a
//! demo user and see the headers the app receives.

mod common;

use common::browser::{Browser, Page};
use common::free_port;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Demo {
    port: u16,
    admin_port: u16,
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    async fn start() -> Demo {
        let (port, admin_port) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "demo",
                "--port",
                &port.to_string(),
                "--admin-port",
                &admin_port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let demo = Demo {
            port,
            admin_port,
            child,
        };
        let ready = common::eventually(Duration::from_secs(20), || async {
            let r = reqwest::get(format!("http://127.0.0.1:{}/readyz", demo.admin_port))
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            (v["status"] == "ready").then_some(())
        })
        .await;
        assert!(ready.is_some(), "the demo did not become ready");
        demo
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Opens `path`, picks `user` on the development provider's page, and comes back.
    async fn sign_in(&self, b: &Browser, path: &str, user: &str) -> Page {
        let mut page = b.get(&self.url(path)).await;
        while page.is_redirect() {
            page = b.get(&page.location().unwrap()).await;
        }
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Development identity provider"));
        assert!(page.body.contains("Not for production"));
        let form = page
            .form("/authorize/approve")
            .expect("the provider's form");
        let mut fields: Vec<(&str, &str)> = form
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        fields.push(("user", user));
        let back = b.post_form(&form.action, &fields).await;
        b.follow(back, 5).await
    }
}

#[tokio::test]
async fn a_newcomer_signs_in_to_the_demo_and_sees_the_injected_headers() {
    let demo = Demo::start().await;
    let b = Browser::new();
    let home = b.get(&demo.url("/")).await;
    assert_eq!(home.status, 200);
    let page = demo.sign_in(&b, "/account", "alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.url, demo.url("/account"));
    for shown in [
        "<th>x-auth-user</th><td>alice",
        "<th>x-auth-email</th><td>alice@example.com",
        "<th>x-auth-groups</th><td>staff,customers",
        "<th>x-portcullis-assertion</th>",
    ] {
        assert!(
            page.body.contains(shown),
            "{shown} missing from the demo page"
        );
    }
    assert!(
        !page.body.contains("<th>cookie</th>"),
        "the session cookie stays with the gateway"
    );
    assert_eq!(b.get(&demo.url("/staff")).await.status, 200);
    assert_eq!(b.get(&demo.url("/mfa")).await.status, 403);
    assert_eq!(b.get(&demo.url("/admin")).await.status, 403);
    let me = b.get(&demo.url("/.portcullis/userinfo")).await;
    assert_eq!(me.json()["sub"], "alice");
}

#[tokio::test]
async fn demo_users_differ_in_what_they_may_see() {
    let demo = Demo::start().await;
    let bob = Browser::new();
    assert_eq!(demo.sign_in(&bob, "/account", "bob").await.status, 200);
    assert_eq!(bob.get(&demo.url("/staff")).await.status, 403);
    let mfa = Browser::new();
    assert_eq!(demo.sign_in(&mfa, "/mfa", "alice-mfa").await.status, 200);
}

#[tokio::test]
async fn a_demo_user_signs_out_through_the_confirmation_form() {
    let demo = Demo::start().await;
    let b = Browser::new();
    assert_eq!(demo.sign_in(&b, "/account", "alice").await.status, 200);
    let confirm = b.get(&demo.url("/.portcullis/logout")).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let form = confirm
        .form("/.portcullis/logout")
        .expect("a sign-out form");
    let fields: Vec<(&str, &str)> = form
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(fields.iter().any(|(k, v)| *k == "csrf" && v.len() == 43));
    let out = b.post_form(&form.action, &fields).await;
    assert_eq!(out.status, 303, "{}", out.body);
    let end_session = out.location().unwrap();
    assert!(
        end_session.contains("/logout?") && end_session.contains("id_token_hint="),
        "RP-initiated logout at the demo provider: {end_session}"
    );
    let landed = b.follow(out, 5).await;
    assert_eq!(landed.url, demo.url("/"));
    let again = b.get(&demo.url("/account")).await;
    assert_eq!(again.status, 302, "signed out: back to login");
}
