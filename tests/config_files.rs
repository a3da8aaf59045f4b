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
    // The example at the top of the repository.
    let cfg = config::load(&root().join("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cfg.routes.is_empty());
    checked.push("gateway.yaml".to_string());

    // The demo's embedded configuration, with its ports filled in as `portcullis demo` does.
    let tmp = tempfile::tempdir().unwrap();
    let path = portcullis::demo::write_config(tmp.path(), 18080, 19090, 18081).unwrap();
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
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    let cfg = config::load(&root().join("gateway.yaml")).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("route ")).count(),
        cfg.routes.len()
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
