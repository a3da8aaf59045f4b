//! Configuration files: golden error reports for broken file sets in
//! `tests/fixtures/config/`, and every YAML file shipped in the repository validated.
//!
//! Set `UPDATE_GOLDEN=1` to rewrite the `expected.txt` files after an intended change.

use portcullis::config;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads a fixture and renders its errors with paths relative to the fixture directory.
fn report(dir: &Path) -> String {
    match config::load(&dir.join("gateway.yaml")) {
        Ok(_) => "ok\n".to_string(),
        Err(errors) => {
            let prefix = format!("{}/", dir.display());
            let mut out = errors.to_string().replace(&prefix, "");
            out.push('\n');
            out
        }
    }
}

#[test]
fn broken_configs_report_every_error_with_file_path_and_line() {
    let fixtures = root().join("tests/fixtures/config");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "fixtures missing");
    let mut failures = Vec::new();
    for dir in dirs {
        let got = report(&dir);
        let expected_path = dir.join("expected.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                dir.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_policy_file_with_three_mistakes_gets_all_three_reported() {
    let dir = root().join("tests/fixtures/config/three-mistakes");
    let errors = config::load(&dir.join("gateway.yaml")).unwrap_err();
    assert_eq!(errors.len(), 3, "{errors}");
    let paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].upstream",
            "routes[1].match.method",
            "routes[2].auth"
        ]
    );
    assert!(errors.errors.iter().all(|e| e.pos.is_some()));
}

/// Every YAML file in the repository that Portcullis reads must be valid.
#[test]
fn every_shipped_gateway_config_is_valid() {
    let mut checked = Vec::new();
    // The example at the top of the repository, checked as an operator would, with its
    // client secret in the environment (of a child process: tests share this one's).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(root().join("gateway.yaml"))
        .env("PORTCULLIS_OIDC_CLIENT_SECRET", "example-secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("warning"), "{stdout}");
    checked.push("gateway.yaml".to_string());

    // The demo's embedded configuration, with its ports filled in as `portcullis demo` does.
    let tmp = tempfile::tempdir().unwrap();
    let ports = portcullis::demo::DemoPorts {
        gateway: 18080,
        admin: 19090,
        app: 18081,
        idp: 18082,
    };
    let path = portcullis::demo::write_config(tmp.path(), &ports, "demo-secret").unwrap();
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("demo: {e}"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    checked.push("deploy/demo".to_string());

    // The benchmark's configuration, with its placeholders filled in.
    let bench = root().join("bench/conf");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("policies")).unwrap();
    let gw = std::fs::read_to_string(bench.join("gateway.yaml")).unwrap();
    let gw = gw
        .replace("@@GW_PORT@@", "18080")
        .replace("@@ADMIN_PORT@@", "19090")
        .replace("@@UP_PORT@@", "18081");
    std::fs::write(tmp.path().join("gateway.yaml"), gw).unwrap();
    for e in std::fs::read_dir(bench.join("policies")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join("policies").join(p.file_name().unwrap())).unwrap();
    }
    config::load(&tmp.path().join("gateway.yaml")).unwrap_or_else(|e| panic!("bench: {e}"));
    checked.push("bench/conf".to_string());

    // Any other gateway config under deploy/ or docs/ (examples in documentation).
    for dir in ["deploy", "docs/examples"] {
        for path in yaml_files(&root().join(dir)) {
            if path.file_name().is_some_and(|n| n == "gateway.yaml")
                && !path.starts_with(root().join("deploy/demo"))
            {
                config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked.push(path.display().to_string());
            }
        }
    }
    assert!(checked.len() >= 3, "{checked:?}");
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    out
}

/// `portcullis check` prints one line per route and exits 0 on the shipped example, and
/// exits 1 listing every error on a broken set.
#[test]
fn check_command_reports_routes_or_errors() {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let ok = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(root().join("gateway.yaml"))
        .env("PORTCULLIS_OIDC_CLIENT_SECRET", "example-secret")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    let policy = std::fs::read_to_string(root().join("policies/shop.yaml")).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("route ")).count(),
        policy.matches("- name:").count()
    );

    let bad = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(root().join("tests/fixtures/config/three-mistakes/gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        3,
        "{err}"
    );
    assert!(err.contains("policies/shop.yaml:4:"), "{err}");
}

/// A policy file that is not read (wrong extension, a subdirectory) is warned about, so a
/// deny rule cannot vanish silently; `.YAML` in upper case is read.
#[test]
fn unread_policy_directory_entries_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies/old")).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:8080\" }]\npublic_url: \"https://a.example\"\n",
    )
    .unwrap();
    let deny = "routes:\n  - name: NAME\n    match: { path_prefix: /admin }\n    auth: deny\n";
    std::fs::write(
        dir.path().join("policies/10-deny.YAML"),
        deny.replace("NAME", "upper"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/20-deny.yaml.bak"),
        deny.replace("NAME", "bak"),
    )
    .unwrap();
    std::fs::write(dir.path().join("policies/.hidden"), "").unwrap();
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].name, "upper");
    let warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings.iter().any(|w| w.contains("20-deny.yaml.bak")),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.contains("old")), "{warnings:?}");
}

/// A deny rule limited to a host, followed by a host-less public route over the same
/// paths, is a trap when the upstream ignores Host: `check` warns.
#[test]
fn host_limited_deny_before_a_host_less_route_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:8080\" }]\npublic_url: \"https://a.example\"\nupstreams:\n  app: { targets: [\"127.0.0.1:3000\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "routes:\n  - name: account\n    match: { host: shop.example.com, path_prefix: /account }\n    auth: deny\n  - name: all\n    match: { path_prefix: / }\n    upstream: app\n    auth: public\n",
    )
    .unwrap();
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap();
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(cfg.warnings[0].to_string().contains("another Host header"));
}

/// `check --request` shows what the gateway would do with a request, using the request
/// path's own normalisation and matching.
#[test]
fn check_explains_what_happens_to_a_request() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(root().join("gateway.yaml"))
        .env("PORTCULLIS_OIDC_CLIENT_SECRET", "example-secret")
        .args(["--host", "shop.example.com"])
        .args(["--request", "GET /static/app.css"])
        .args(["--request", "GET /internal/../static/x"])
        .args(["--request", "GET /static/..%2finternal"])
        .args(["--request", "GET /x/..;/internal"])
        .args(["--request", "POST /internal;a=b/secrets"])
        .args(["--request", "GET https://admin.shop.example.com/static/x"])
        .args(["--request", "get /"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "GET /static/app.css: route assets (public) -> upstream shop as /static/app.css",
            "GET /internal/../static/x: route assets (public) -> upstream shop as /static/x",
            "GET /static/..%2finternal: 400 encoded-slash",
            "GET /x/..;/internal: 400 ambiguous-dot-segment",
            "POST /internal;a=b/secrets: 403 route-denied by route internal",
            "GET https://admin.shop.example.com/static/x: 403 route-denied by route admin-host",
            "get /: 400 bad-method",
        ]
    );
}
