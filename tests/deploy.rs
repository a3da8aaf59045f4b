//! The deployment artefacts in `deploy/`: every YAML file there is parsed and checked,
//! each gateway configuration passes `portcullis check` as the container or pod sees it,
//! the Kubernetes manifests agree with each other and with the configuration, the
//! compose file with what it mounts, and the systemd unit starts and reloads a real
//! gateway. What cannot be done here (building or pulling images, a cluster) is said in
//! `deploy/README.md`.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `*.yaml` and `*.yml` file under `dir`, in name order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut rd: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    rd.sort();
    for p in rd {
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    out
}

/// The documents of a YAML text, with the parser the gateway uses.
fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The one document of a YAML text.
fn document(text: &str, what: &str) -> Value {
    let mut docs = documents(text, what);
    assert_eq!(docs.len(), 1, "{what}: expected one YAML document");
    docs.remove(0)
}

/// What a YAML file in `deploy/` is, told by its top-level keys.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Kind {
    /// Kubernetes objects, one per document.
    Kubernetes,
    /// A docker compose file.
    Compose,
    /// A Portcullis `gateway.yaml`.
    Gateway,
    /// A Portcullis policy file.
    Policy,
    /// The configuration of Dex, the compose demo's provider.
    Dex,
    /// Prometheus rules (`groups:`, or a `promtool test rules` file), checked by
    /// `promtool` in CI and by tests/observability.rs.
    PrometheusRules,
}

fn classify(docs: &[Value]) -> Option<Kind> {
    let has = |d: &Value, k: &str| d.get(k).is_some();
    if docs.is_empty() {
        return None;
    }
    if docs.iter().all(|d| has(d, "apiVersion") && has(d, "kind")) {
        return Some(Kind::Kubernetes);
    }
    let [d] = docs else { return None };
    if has(d, "services") {
        Some(Kind::Compose)
    } else if has(d, "listen") && has(d, "public_url") {
        Some(Kind::Gateway)
    } else if has(d, "routes") {
        Some(Kind::Policy)
    } else if has(d, "issuer") && has(d, "staticClients") {
        Some(Kind::Dex)
    } else if has(d, "groups") || (has(d, "rule_files") && has(d, "tests")) {
        Some(Kind::PrometheusRules)
    } else {
        None
    }
}

/// Every YAML file under `deploy/` with its kind.
fn deploy_yaml() -> Vec<(PathBuf, Kind, Vec<Value>)> {
    yaml_files(&deploy())
        .into_iter()
        .map(|p| {
            let docs = documents(&read(&p), &p.display().to_string());
            let kind = classify(&docs).unwrap_or_else(|| {
                panic!(
                    "{}: not a Kubernetes manifest, compose file, gateway config, policy file \
                     or Dex config; add a check for it to tests/deploy.rs",
                    p.display()
                )
            });
            (p, kind, docs)
        })
        .collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .port()
}

// ---------------------------------------------------------------------------------
// Running the binary.

struct Checked {
    ok: bool,
    output: String,
}

/// `portcullis check --config <config>` with exactly `env` as its environment.
fn check(config: &Path, env: &BTreeMap<String, String>) -> Checked {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(config)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    Checked {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts that `check` accepts `config` without errors or warnings.
fn assert_checks(config: &Path, env: &BTreeMap<String, String>, what: &str) {
    let c = check(config, env);
    assert!(c.ok, "{what}: portcullis check failed:\n{}", c.output);
    assert!(
        !c.output.contains("warning"),
        "{what}: portcullis check warns:\n{}",
        c.output
    );
    assert!(
        c.output.contains("route "),
        "{what}: no routes:\n{}",
        c.output
    );
}

/// Asserts that the command line `args` (without the program) names a subcommand the CLI
/// has and only flags that subcommand accepts.
fn assert_cli_accepts(args: &[String], what: &str) {
    let sub = args
        .first()
        .unwrap_or_else(|| panic!("{what}: no subcommand"));
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([sub.as_str(), "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: `portcullis {sub}` is not a command:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{what}: `portcullis {sub}` has no flag {flag}:\n{help}"
        );
    }
}

/// The value following `--config` in a command line.
fn config_flag(args: &[String], what: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{what}: no --config in {args:?}"));
    args.get(i + 1)
        .unwrap_or_else(|| panic!("{what}: --config without a value"))
        .clone()
}

/// A gateway process started by a test, killed when dropped.
struct Running {
    child: std::process::Child,
    admin_port: u16,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts `program args` with exactly `env`, and waits until the admin listener on
    /// `admin_port` answers `/readyz` (polling; the failure shows the log).
    async fn start(
        program: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
        admin_port: u16,
        log: PathBuf,
    ) -> Running {
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut r = Running {
            child,
            admin_port,
            log,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("the gateway exited with {status}:\n{}", read(&r.log));
            }
            if r.admin("/readyz", None)
                .await
                .is_ok_and(|x| x.status == 200)
            {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway did not become ready:\n{}",
                read(&r.log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn admin(&self, path: &str, token: Option<&str>) -> Result<Response, String> {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        try_send(
            self.admin_port,
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{auth}\r\n")
                .as_bytes(),
        )
        .await
    }

    async fn metric(&self, series: &str, token: Option<&str>) -> Option<f64> {
        let r = self.admin("/metrics", token).await.ok()?;
        metric_value(&r.text(), series)
    }
}

// ---------------------------------------------------------------------------------
// Every file.

#[test]
fn every_yaml_file_under_deploy_parses_and_is_of_a_kind_these_tests_check() {
    let files = deploy_yaml();
    let kinds: BTreeSet<String> = files.iter().map(|(_, k, _)| format!("{k:?}")).collect();
    for k in ["Kubernetes", "Compose", "Gateway", "Policy", "Dex"] {
        assert!(kinds.contains(k), "no {k} file under deploy/: {files:?}");
    }

    // Every policy file is in the policy directory of a gateway config under deploy/, so
    // checking the gateway configs (below) checks it too.
    let policy_dirs: Vec<PathBuf> = files
        .iter()
        .filter(|(_, k, _)| *k == Kind::Gateway)
        .map(|(p, _, docs)| {
            let dir = docs[0]
                .get("policies")
                .map_or("policies", |v| str_of(v, "policies"));
            p.parent().unwrap().join(dir)
        })
        .collect();
    for (p, k, _) in &files {
        if *k == Kind::Policy {
            // (Paths compare by components: `policies/` equals `policies`.)
            assert!(
                policy_dirs.iter().any(|d| p.parent() == Some(d.as_path())),
                "{}: a policy file no gateway config under deploy/ reads",
                p.display()
            );
        }
    }

    // The Dex config is what the compose file mounts into the provider.
    let compose = read(&deploy().join("compose/docker-compose.yml"));
    for (p, k, _) in &files {
        if *k == Kind::Dex {
            let name = p.file_name().unwrap().to_string_lossy();
            assert!(
                compose.contains(&format!("./{name}:")),
                "{}: not mounted by the compose file",
                p.display()
            );
        }
    }
}

#[test]
fn every_gateway_config_under_deploy_passes_check() {
    let mut checked = Vec::new();
    for (path, kind, _) in deploy_yaml() {
        if kind != Kind::Gateway {
            continue;
        }
        if path == deploy().join("demo/gateway.yaml") {
            // The demo's, as `portcullis demo` writes it: its ports filled in.
            assert_eq!(read(&path), portcullis::demo::DEMO_GATEWAY);
            let tmp = tempfile::tempdir().unwrap();
            let ports = portcullis::demo::DemoPorts {
                gateway: free_port(),
                admin: free_port(),
                app: free_port(),
                idp: free_port(),
            };
            let cfg = portcullis::demo::write_config(tmp.path(), &ports, "demo-secret").unwrap();
            assert_checks(&cfg, &BTreeMap::new(), "deploy/demo");
        } else {
            // As written, with no environment: configs under deploy/ other than the
            // Kubernetes one (checked with the pod's environment below) read their
            // secrets from files beside them.
            assert_checks(&path, &BTreeMap::new(), &path.display().to_string());
        }
        checked.push(path);
    }
    assert!(checked.len() >= 2, "{checked:?}");
}

// ---------------------------------------------------------------------------------
// Kubernetes.

/// Every object of `deploy/kubernetes/`.
fn k8s_objects() -> Vec<Value> {
    let mut out = Vec::new();
    for p in yaml_files(&deploy().join("kubernetes")) {
        out.extend(documents(&read(&p), &p.display().to_string()));
    }
    out
}

fn name_of(o: &Value) -> &str {
    str_of(&o["metadata"]["name"], "metadata.name")
}

fn objects<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn object<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && name_of(o) == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

/// True when the `matchLabels` selector selects `labels` (expressions are not used
/// here; a selector with them fails the test rather than being half understood).
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions: teach tests/deploy.rs to read them"
    );
    let m = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("selector without matchLabels: {selector}"));
    !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The gateway: Deployment `portcullis`, its one container, and the `gateway.yaml` of
/// ConfigMap `portcullis-config` (that it is what `--config` reads is checked below).
struct Gw<'a> {
    deployment: &'a Value,
    pod: &'a Value,
    container: &'a Value,
    labels: &'a Value,
    /// The ConfigMap's `gateway.yaml`, parsed.
    config: Value,
}

fn gateway_deployment(objs: &[Value]) -> Gw<'_> {
    let deployment = object(objs, "Deployment", "portcullis");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container in the gateway's pod");
    let config = document(
        str_of(
            &object(objs, "ConfigMap", "portcullis-config")["data"]["gateway.yaml"],
            "ConfigMap portcullis-config: gateway.yaml",
        ),
        "ConfigMap gateway.yaml",
    );
    Gw {
        deployment,
        pod,
        container: &containers[0],
        labels: &deployment["spec"]["template"]["metadata"]["labels"],
        config,
    }
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap_or_else(|| panic!("container without args"))
        .iter()
        .map(|a| str_of(a, "args").to_string())
        .collect()
}

/// The container port a probe or Service `targetPort` names (by name or number).
fn container_port(container: &Value, port: &Value) -> u16 {
    let ports = container["ports"].as_array().unwrap();
    match port {
        Value::Number(n) => {
            let n = n.as_u64().unwrap() as u16;
            assert!(
                ports.iter().any(|p| p["containerPort"] == n),
                "port {n} is not a container port"
            );
            n
        }
        Value::String(name) => ports
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}"))
            as u16,
        other => panic!("port {other}"),
    }
}

/// The secret keys the pod reads, as `(Secret name, key)` of each environment variable.
fn secret_refs(container: &Value) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for e in container["env"].as_array().into_iter().flatten() {
        if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
            out.insert(
                str_of(&e["name"], "env name").to_string(),
                (
                    str_of(&r["name"], "secretKeyRef.name").to_string(),
                    str_of(&r["key"], "secretKeyRef.key").to_string(),
                ),
            );
        }
    }
    out
}

/// A stand-in for the value the operator puts under each Secret key, in the form the
/// gateway demands (deploy/README.md shows how each is made).
fn stand_in(key: &str) -> String {
    match key {
        // 32 random bytes, base64 (openssl rand -base64 32).
        "session-key" => "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string(),
        // A P-256 key in PKCS#8 PEM (openssl genpkey ... ec_paramgen_curve:P-256).
        "assertion-key" => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem(),
        _ => format!("stand-in-{key}-0123456789abcdef"),
    }
}

/// The container's environment as Kubernetes builds it: literal values with `$(VAR)`
/// replaced by variables defined before them, Secret keys from `secrets`.
fn pod_env(
    container: &Value,
    secrets: &BTreeMap<(String, String), String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = str_of(&e["name"], "env name").to_string();
        let value = if let Some(v) = e.get("value") {
            let mut v = str_of(v, "env value").to_string();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            assert!(!v.contains("$("), "{name}: $(...) of an undefined variable");
            v
        } else {
            let r = e
                .pointer("/valueFrom/secretKeyRef")
                .unwrap_or_else(|| panic!("{name}: neither value nor secretKeyRef"));
            let key = (
                str_of(&r["name"], "name").to_string(),
                str_of(&r["key"], "key").to_string(),
            );
            secrets
                .get(&key)
                .unwrap_or_else(|| panic!("no stand-in for {key:?}"))
                .clone()
        };
        env.insert(name, value);
    }
    assert!(
        container.get("envFrom").is_none(),
        "envFrom: teach tests/deploy.rs to read it"
    );
    env
}

/// Stand-ins for every Secret key the manifests read.
fn secret_stand_ins(objs: &[Value]) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for d in objects(objs, "Deployment") {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            for (_, key) in secret_refs(c) {
                let v = stand_in(&key.1);
                out.entry(key).or_insert(v);
            }
        }
    }
    out
}

/// Writes the files of the gateway container's ConfigMap volumes under `fs` (a stand-in
/// for the container's root) the way the kubelet does, and returns the path of
/// `--config` in it.
fn materialise_pod_files(objs: &[Value], gw: &Gw<'_>, fs: &Path) -> PathBuf {
    for m in gw.container["volumeMounts"].as_array().unwrap() {
        let vol = gw.pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("volumeMount {} names no volume", m["name"]));
        let Some(cm) = vol.get("configMap") else {
            continue;
        };
        let data = &object(objs, "ConfigMap", str_of(&cm["name"], "configMap.name"))["data"];
        let items: Vec<(String, String)> = match cm.get("items") {
            Some(items) => items
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        str_of(&i["key"], "key").into(),
                        str_of(&i["path"], "path").into(),
                    )
                })
                .collect(),
            None => data
                .as_object()
                .unwrap()
                .keys()
                .map(|k| (k.clone(), k.clone()))
                .collect(),
        };
        let files: BTreeMap<String, String> = items
            .into_iter()
            .map(|(key, path)| {
                let text = str_of(&data[&key], &format!("ConfigMap key {key}"));
                (path, text.to_string())
            })
            .collect();
        let dir = fs.join(str_of(&m["mountPath"], "mountPath").trim_start_matches('/'));
        kubelet_write(&dir, &files, 1);
    }
    let config = config_flag(&args_of(gw.container), "gateway container");
    fs.join(config.trim_start_matches('/'))
}

/// Writes a ConfigMap volume as the kubelet's atomic writer does: the files in a
/// directory of their own (`..<version>`), `..data` a symlink to it, and each top-level
/// name a symlink through `..data`. A later version replaces `..data` in one rename.
fn kubelet_write(dir: &Path, files: &BTreeMap<String, String>, version: u32) {
    use std::os::unix::fs::symlink;
    let data_dir = format!("..2025_01_01_00_00_00.{version}");
    for (path, text) in files {
        let target = dir.join(&data_dir).join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, text).unwrap();
    }
    symlink(&data_dir, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for path in files.keys() {
        let top = Path::new(path).components().next().unwrap().as_os_str();
        let link = dir.join(top);
        if link.symlink_metadata().is_err() {
            symlink(Path::new("..data").join(top), link).unwrap();
        }
    }
}

/// The files of the ConfigMap volume at `dir` now, by path (as `kubelet_write` takes them).
fn kubelet_files(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, read(&p));
            }
        }
    }
    let data = dir.join("..data");
    let mut out = BTreeMap::new();
    walk(
        &data.canonicalize().unwrap(),
        &data.canonicalize().unwrap(),
        &mut out,
    );
    out
}

/// The upstream targets of a gateway config that are host names (Service names).
fn named_targets(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (_, u) in config["upstreams"].as_object().unwrap() {
        for t in u["targets"].as_array().unwrap() {
            let t = str_of(t, "target");
            let (host, _) = t.rsplit_once(':').unwrap();
            if host.parse::<IpAddr>().is_err() {
                out.push(t.to_string());
            }
        }
    }
    out
}

#[test]
fn kubernetes_objects_have_kind_and_name_and_leave_the_namespace_to_apply() {
    let objs = k8s_objects();
    let mut seen = BTreeSet::new();
    for o in &objs {
        let kind = str_of(&o["kind"], "kind");
        str_of(&o["apiVersion"], "apiVersion");
        let name = name_of(o);
        assert!(
            o["metadata"].get("namespace").is_none(),
            "{kind} {name}: names a namespace (kubectl apply -n decides)"
        );
        assert!(seen.insert((kind, name)), "{kind} {name} defined twice");
    }
    // No Secret is shipped: the operator creates it (deploy/README.md).
    assert!(objects(&objs, "Secret").is_empty());
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(!objects(&objs, kind).is_empty(), "no {kind}");
    }
}

#[test]
fn kubernetes_configmap_gateway_config_passes_check_as_the_pod_sees_it() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let fs = tempfile::tempdir().unwrap();
    let config = materialise_pod_files(&objs, &gw, fs.path());
    let env = pod_env(gw.container, &secret_stand_ins(&objs));

    // `check` resolves upstream host names; Service names resolve only in the cluster,
    // where the cluster's DNS gives each a ClusterIP. Stand in loopback for it.
    let mut text = read(&config);
    let named = named_targets(&gw.config);
    assert!(
        !named.is_empty(),
        "the upstream is expected to be a Service name"
    );
    for t in named {
        let (_, port) = t.rsplit_once(':').unwrap();
        assert!(text.contains(&t));
        text = text.replace(&t, &format!("127.0.0.1:{port}"));
    }
    std::fs::write(&config, text).unwrap();
    assert_checks(&config, &env, "ConfigMap portcullis-config");

    // Without the pod's environment the same files fail: the check above did read the
    // secrets from it.
    assert!(!check(&config, &BTreeMap::new()).ok);
}

#[test]
fn kubernetes_configmap_is_mounted_where_config_points_with_every_key_projected() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let args = args_of(gw.container);
    assert_eq!(args[0], "run");
    assert_cli_accepts(&args, "the gateway container's args");
    let config = config_flag(&args, "gateway container");

    let mounts = gw.container["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| config.starts_with(&format!("{}/", str_of(&m["mountPath"], "mountPath"))))
        .unwrap_or_else(|| panic!("--config {config} is on no volume"));
    assert_eq!(
        mount["readOnly"], true,
        "the configuration is mounted read-only"
    );
    let rel = &config[str_of(&mount["mountPath"], "mountPath").len() + 1..];
    let vol = gw.pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm = &vol["configMap"];
    let data = object(&objs, "ConfigMap", str_of(&cm["name"], "configMap.name"))["data"]
        .as_object()
        .unwrap();
    let items: BTreeMap<&str, &str> = cm["items"]
        .as_array()
        .expect("items: the policies go into a subdirectory")
        .iter()
        .map(|i| (str_of(&i["key"], "key"), str_of(&i["path"], "path")))
        .collect();

    // --config is the gateway config; every other key is a policy file in the directory
    // `policies` names; and none is left out (keys missing from `items` are not mounted:
    // a policy added to the ConfigMap alone would silently not apply).
    let gateway_key = items
        .iter()
        .find(|(_, p)| **p == rel)
        .map(|(k, _)| *k)
        .unwrap_or_else(|| panic!("no ConfigMap item is mounted at {rel}"));
    assert_eq!(
        classify(std::slice::from_ref(&gw.config)),
        Some(Kind::Gateway)
    );
    assert_eq!(gateway_key, "gateway.yaml");
    let policies = str_of(&gw.config["policies"], "policies").trim_end_matches('/');
    for (key, text) in data {
        let path = items
            .get(key.as_str())
            .unwrap_or_else(|| panic!("ConfigMap key {key} is not under the volume's items"));
        if key == gateway_key {
            continue;
        }
        let doc = document(str_of(text, key), key);
        assert_eq!(classify(&[doc]), Some(Kind::Policy), "{key}");
        assert_eq!(
            Path::new(path).parent(),
            Some(Path::new(policies)),
            "{key} is mounted at {path}, outside policies: {policies}/"
        );
    }
}

#[test]
fn kubernetes_probes_hit_healthz_and_readyz_on_the_configured_admin_port() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let admin = port_of(str_of(&gw.config["admin"]["address"], "admin.address"));
    let c = gw.container;
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(container_port(c, &get["port"]), admin, "{probe} port");
    }
    // The probes send no token: the admin listener must answer them on the pod's
    // address, so it cannot be on loopback.
    let addr: SocketAddr = str_of(&gw.config["admin"]["address"], "admin")
        .parse()
        .unwrap();
    assert!(addr.ip().is_unspecified(), "admin.address {addr}");
}

#[test]
fn kubernetes_services_target_the_gateway_listener_and_admin_ports() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let listen = port_of(str_of(&gw.config["listen"][0]["address"], "listen[0]"));
    let admin = port_of(str_of(&gw.config["admin"]["address"], "admin.address"));
    let services: Vec<&Value> = objects(&objs, "Service")
        .into_iter()
        .filter(|s| {
            selects(
                &serde_json::json!({"matchLabels": s["spec"]["selector"]}),
                gw.labels,
            )
        })
        .collect();
    let target = |s: &Value| -> Vec<u16> {
        s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| container_port(gw.container, &p["targetPort"]))
            .collect()
    };
    let proxy: Vec<&&Value> = services
        .iter()
        .filter(|s| target(s).contains(&listen))
        .collect();
    assert_eq!(proxy.len(), 1, "one Service for the proxy listener");
    assert_eq!(name_of(proxy[0]), "portcullis");
    let admins: Vec<&&Value> = services
        .iter()
        .filter(|s| target(s).contains(&admin))
        .collect();
    assert_eq!(admins.len(), 1, "one Service for the admin listener");
    // Kept apart, so an Ingress pointed at the proxy Service cannot reach the admin API.
    assert_eq!(target(proxy[0]), vec![listen]);
    assert_eq!(target(admins[0]), vec![admin]);
}

#[test]
fn kubernetes_pods_run_as_non_root_with_a_read_only_root_and_resources() {
    let objs = k8s_objects();
    let deployments = objects(&objs, "Deployment");
    assert!(deployments.len() >= 2, "the gateway and Redis");
    for d in deployments {
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{}", name_of(d));
        for c in pod["containers"].as_array().unwrap() {
            let what = format!("{}/{}", name_of(d), c["name"]);
            let sc = &c["securityContext"];
            let non_root = sc
                .get("runAsNonRoot")
                .or_else(|| pod["securityContext"].get("runAsNonRoot"));
            assert_eq!(non_root, Some(&Value::Bool(true)), "{what}: runAsNonRoot");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{what}"
            );
            let r = &c["resources"];
            for (k, what2) in [
                ("/requests/cpu", "cpu request"),
                ("/requests/memory", "memory request"),
                ("/limits/memory", "memory limit"),
            ] {
                assert!(r.pointer(k).is_some(), "{what}: no {what2}");
            }
            let image = str_of(&c["image"], "image");
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{what}: pin the image tag"
            );
        }
    }
    // The gateway's user is the image's (numeric, so runAsNonRoot can verify it).
    let gw = gateway_deployment(&objs);
    let (uid, _) = dockerfile_user();
    assert_eq!(gw.pod["securityContext"]["runAsUser"], uid);
}

#[test]
fn kubernetes_secrets_the_manifests_read_are_created_as_the_readme_says() {
    let objs = k8s_objects();
    // `kubectl create secret generic NAME --from-literal=KEY=... --from-file=KEY=...`
    let readme = read(&deploy().join("README.md")).replace("\\\n", " ");
    let mut created: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in readme.lines() {
        let Some((_, rest)) = line.split_once("kubectl create secret generic ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let name = words.next().unwrap().to_string();
        let keys = created.entry(name).or_default();
        for w in words {
            if let Some(kv) = w
                .strip_prefix("--from-literal=")
                .or_else(|| w.strip_prefix("--from-file="))
            {
                keys.insert(kv.split('=').next().unwrap().to_string());
            }
        }
    }
    assert!(!created.is_empty(), "deploy/README.md creates no Secret");

    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for d in objects(&objs, "Deployment") {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            wanted.extend(secret_refs(c).into_values());
        }
        for v in d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(s) = v.get("secret") {
                panic!("{}: mounts Secret {s}: check its keys here", name_of(d));
            }
            if let Some(cm) = v.get("configMap") {
                object(&objs, "ConfigMap", str_of(&cm["name"], "configMap.name"));
            }
        }
    }
    for m in objects(&objs, "ServiceMonitor") {
        for e in m["spec"]["endpoints"].as_array().unwrap() {
            if let Some(c) = e.pointer("/authorization/credentials") {
                wanted.insert((
                    str_of(&c["name"], "name").into(),
                    str_of(&c["key"], "key").into(),
                ));
            }
        }
    }
    assert!(wanted.len() >= 5, "{wanted:?}");
    for (name, key) in &wanted {
        assert!(
            created.get(name).is_some_and(|keys| keys.contains(key)),
            "Secret {name} key {key} is read by the manifests but deploy/README.md does not \
             create it (it creates {created:?})"
        );
    }
    // And the README asks for nothing that nobody reads.
    for (name, keys) in &created {
        for key in keys {
            assert!(
                wanted.contains(&(name.clone(), key.clone())),
                "deploy/README.md creates {name}/{key}, which nothing reads"
            );
        }
    }
}

#[test]
fn kubernetes_hpa_pdb_and_spread_select_the_gateway_pods() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let d = gw.deployment;
    assert!(
        selects(&d["spec"]["selector"], gw.labels),
        "the Deployment's selector must select its own pods"
    );
    // The autoscaler owns the replica count.
    assert!(
        d["spec"].get("replicas").is_none(),
        "replicas is left to the HPA"
    );
    let redis_pods: Vec<&Value> = objects(&objs, "Deployment")
        .into_iter()
        .filter(|o| name_of(o) != name_of(d))
        .map(|o| &o["spec"]["template"]["metadata"]["labels"])
        .collect();
    assert!(!redis_pods.is_empty());

    let hpas = objects(&objs, "HorizontalPodAutoscaler");
    assert_eq!(hpas.len(), 1);
    let hpa = &hpas[0]["spec"];
    assert_eq!(hpa["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["scaleTargetRef"]["apiVersion"], "apps/v1");
    assert_eq!(hpa["scaleTargetRef"]["name"], name_of(d));
    let min = hpa["minReplicas"].as_u64().unwrap();
    assert!(min >= 2, "at least two replicas");
    assert!(hpa["maxReplicas"].as_u64().unwrap() > min);
    // CPU utilisation is measured against the request.
    for m in hpa["metrics"].as_array().unwrap() {
        if m.pointer("/resource/name") == Some(&Value::from("cpu")) {
            assert!(gw.container.pointer("/resources/requests/cpu").is_some());
        }
    }

    let pdbs = objects(&objs, "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    let pdb = &pdbs[0]["spec"];
    assert!(
        selects(&pdb["selector"], gw.labels),
        "the PDB selects the gateway"
    );
    for r in &redis_pods {
        assert!(
            !selects(&pdb["selector"], r),
            "the PDB selects only the gateway"
        );
    }
    // At the HPA's minimum, a drain can still take one replica down.
    let disruptible = match (pdb.get("maxUnavailable"), pdb.get("minAvailable")) {
        (Some(m), None) => m.as_u64().unwrap(),
        (None, Some(m)) => min.saturating_sub(m.as_u64().unwrap()),
        other => panic!("PDB: {other:?}"),
    };
    assert!(disruptible >= 1, "the PDB would block every drain");

    for t in gw.pod["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(
            selects(&t["labelSelector"], gw.labels),
            "topologySpreadConstraints"
        );
    }
}

#[test]
fn kubernetes_service_monitor_scrapes_metrics_on_the_admin_port_with_the_admin_token() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let admin = port_of(str_of(&gw.config["admin"]["address"], "admin.address"));
    let monitors = objects(&objs, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let spec = &monitors[0]["spec"];
    let services: Vec<&Value> = objects(&objs, "Service")
        .into_iter()
        .filter(|s| selects(&spec["selector"], &s["metadata"]["labels"]))
        .collect();
    assert!(
        !services.is_empty(),
        "the ServiceMonitor selects no Service"
    );
    let endpoints = spec["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let e = &endpoints[0];
    assert_eq!(e["path"], "/metrics");
    for s in &services {
        assert!(
            selects(
                &serde_json::json!({"matchLabels": s["spec"]["selector"]}),
                gw.labels
            ),
            "Service {} is not the gateway's",
            name_of(s)
        );
        let port = s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == e["port"])
            .unwrap_or_else(|| panic!("Service {} has no port {}", name_of(s), e["port"]));
        assert_eq!(container_port(gw.container, &port["targetPort"]), admin);
    }
    // /metrics needs the admin token: the one the gateway reads, from the same Secret key.
    let token_env = str_of(&gw.config["admin"]["token"]["env"], "admin.token.env");
    let (secret, key) = secret_refs(gw.container)
        .remove(token_env)
        .unwrap_or_else(|| panic!("{token_env} does not come from a Secret"));
    assert_eq!(e["authorization"]["type"], "Bearer");
    assert_eq!(e["authorization"]["credentials"]["name"], secret.as_str());
    assert_eq!(e["authorization"]["credentials"]["key"], key.as_str());
}

/// The gateway's Redis URL as the pod sees it, parsed, with the Service it names.
fn redis_url(objs: &[Value], gw: &Gw<'_>) -> url::Url {
    let store = &gw.config["session"]["store"];
    assert_eq!(store["type"], "redis");
    let var = str_of(&store["url"]["env"], "session.store.url.env");
    let stand_ins: BTreeMap<(String, String), String> = secret_stand_ins(objs);
    let env = pod_env(gw.container, &stand_ins);
    url::Url::parse(
        env.get(var)
            .unwrap_or_else(|| panic!("{var} is not set in the pod")),
    )
    .unwrap()
}

/// The `--requirepass` of a Redis container, as Kubernetes fills it in from the Secret.
fn redis_requirepass(container: &Value, objs: &[Value]) -> String {
    let env = pod_env(container, &secret_stand_ins(objs));
    let args = args_of(container);
    let i = args
        .iter()
        .position(|a| a == "--requirepass")
        .expect("Redis has --requirepass");
    let mut pass = args[i + 1].clone();
    for (k, v) in &env {
        pass = pass.replace(&format!("$({k})"), v);
    }
    assert!(!pass.contains("$("), "--requirepass {pass}");
    pass
}

/// The Redis container of `deploy/kubernetes` (there is one).
fn redis_container(objs: &[Value]) -> &Value {
    let cs: Vec<&Value> = objects(objs, "Deployment")
        .into_iter()
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
        })
        .filter(|c| str_of(&c["image"], "image").starts_with("redis:"))
        .collect();
    assert_eq!(cs.len(), 1, "one Redis container");
    cs[0]
}

#[test]
fn kubernetes_redis_url_points_at_the_redis_service_with_redis_password() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let url = redis_url(&objs, &gw);
    let host = url.host_str().unwrap();
    let service = object(&objs, "Service", host);
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == url.port().unwrap_or(6379))
        .unwrap_or_else(|| panic!("Service {host} has no port {:?}", url.port()));
    let selector = serde_json::json!({"matchLabels": service["spec"]["selector"]});
    let redis: Vec<&Value> = objects(&objs, "Deployment")
        .into_iter()
        .filter(|d| selects(&selector, &d["spec"]["template"]["metadata"]["labels"]))
        .collect();
    assert_eq!(redis.len(), 1, "Service {host} selects one Deployment");
    let redis = redis[0];
    assert!(
        !selects(&selector, gw.labels),
        "Service {host} selects the gateway"
    );
    let c = &redis["spec"]["template"]["spec"]["containers"][0];
    assert!(str_of(&c["image"], "image").starts_with("redis:"));
    assert_eq!(container_port(c, &port["targetPort"]), 6379);

    // The password in the URL is Redis's requirepass (both from the same Secret key).
    assert_eq!(url.password(), Some(redis_requirepass(c, &objs).as_str()));

    // Where NetworkPolicy is enforced, the gateway's pods may reach Redis.
    for np in objects(&objs, "NetworkPolicy") {
        if !selects(
            &np["spec"]["podSelector"],
            &redis["spec"]["template"]["metadata"]["labels"],
        ) {
            continue;
        }
        let admitted = np["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| {
                rule["from"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| selects(&f["podSelector"], gw.labels))
                    && rule["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["port"] == 6379)
            });
        assert!(
            admitted,
            "NetworkPolicy {} keeps the gateway from Redis",
            name_of(np)
        );
    }
}

/// The gateway of `deploy/kubernetes` running as its pod would: the ConfigMap's files
/// as the kubelet writes them, the container's environment with stand-ins for the
/// Secret, a Redis with the Secret's password in place of the Redis Service, and free
/// loopback ports in place of the pod's.
struct Pod {
    gateway: Running,
    /// The ConfigMap volume holding `--config`.
    volume: PathBuf,
    env: BTreeMap<String, String>,
    _redis: Kill,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_pod(objs: &[Value], gw: &Gw<'_>) -> Pod {
    let fs = tempfile::tempdir().unwrap();
    let config = materialise_pod_files(objs, gw, fs.path());
    let mut env = pod_env(gw.container, &secret_stand_ins(objs));

    let redis_port = free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let password = redis_requirepass(redis_container(objs), objs);
    let redis = Kill(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                &password,
            ])
            .arg("--dir")
            .arg(redis_dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)"),
    );
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(up.is_some(), "redis-server did not start");
    let url = redis_url(objs, gw);
    let var = str_of(&gw.config["session"]["store"]["url"]["env"], "url env");
    let service = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(6379));
    let local = env[var].replace(&service, &format!("127.0.0.1:{redis_port}"));
    assert_ne!(local, env[var]);
    env.insert(var.to_string(), local);

    let listen = str_of(&gw.config["listen"][0]["address"], "listen").to_string();
    let admin = str_of(&gw.config["admin"]["address"], "admin").to_string();
    let (port, admin_port) = (free_port(), free_port());
    let mut text = read(&config)
        .replace(&listen, &format!("127.0.0.1:{port}"))
        .replace(&admin, &format!("127.0.0.1:{admin_port}"));
    for t in named_targets(&gw.config) {
        text = text.replace(&t, &format!("127.0.0.1:{}", free_port()));
    }
    std::fs::write(&config, text).unwrap();

    let args = vec![
        "run".to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_portcullis"));
    let gateway = Running::start(&bin, &args, &env, admin_port, fs.path().join("log")).await;
    Pod {
        gateway,
        volume: config.parent().unwrap().to_path_buf(),
        env,
        _redis: redis,
        _dirs: (fs, redis_dir),
    }
}

#[tokio::test]
async fn kubernetes_pod_reaches_its_password_protected_redis_and_probes_need_no_token() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    let pod = run_pod(&objs, &gw).await;
    let running = &pod.gateway;

    // The kubelet's probes carry no token.
    let health = running.admin("/healthz", None).await.unwrap();
    assert_eq!(health.status, 200);
    let ready = running.admin("/readyz", None).await.unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json()["session_store"],
        "up",
        "the Redis URL with the Secret's password reaches Redis: {}",
        ready.text()
    );
    // Prometheus must send the token (the ServiceMonitor's Secret key).
    assert_eq!(running.admin("/metrics", None).await.unwrap().status, 401);
    let token = &pod.env[str_of(&gw.config["admin"]["token"]["env"], "token env")];
    assert_eq!(
        running
            .metric("portcullis_session_store_up", Some(token))
            .await,
        Some(1.0),
        "{}",
        read(&running.log)
    );
}

#[tokio::test]
async fn kubernetes_configmap_update_is_loaded_by_the_running_pod() {
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    assert_eq!(
        gw.config["watch_config"], true,
        "ConfigMap edits apply by watch_config"
    );
    let pod = run_pod(&objs, &gw).await;
    let token = &pod.env[str_of(&gw.config["admin"]["token"]["env"], "token env")];
    let routes = |r: Response| r.json()["routes"].as_u64().unwrap();
    let before = routes(pod.gateway.admin("/readyz", None).await.unwrap());

    // The kubelet's update: the files with one more route, swapped in through `..data`.
    let mut files = kubelet_files(&pod.volume);
    let policy = files
        .keys()
        .find(|k| k.starts_with("policies/"))
        .unwrap()
        .clone();
    files
        .get_mut(&policy)
        .unwrap()
        .push_str("  - name: added-by-update\n    match: { path: /added }\n    auth: deny\n");
    kubelet_write(&pod.volume, &files, 2);

    let after = eventually(Duration::from_secs(20), || async {
        let r = pod.gateway.admin("/readyz", None).await.ok()?;
        let n = routes(r);
        (n > before).then_some(n)
    })
    .await;
    assert_eq!(
        after,
        Some(before + 1),
        "the updated ConfigMap was not loaded:\n{}",
        read(&pod.gateway.log)
    );
    assert_eq!(
        pod.gateway
            .metric(
                "portcullis_config_reloads_total{result=\"error\"}",
                Some(token)
            )
            .await,
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------------
// docker compose.

fn compose() -> Value {
    let path = deploy().join("compose/docker-compose.yml");
    document(&read(&path), "docker-compose.yml")
}

fn compose_dir() -> PathBuf {
    deploy().join("compose")
}

/// A service's bind mounts as `(host path, container path)`.
fn binds(service: &Value) -> Vec<(PathBuf, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let v = str_of(v, "volume");
            let mut parts = v.split(':');
            let src = parts.next().unwrap();
            let dst = parts
                .next()
                .unwrap_or_else(|| panic!("{v}: not a bind mount"));
            assert!(
                src.starts_with("./"),
                "{v}: a bind mount relative to the compose file"
            );
            (
                compose_dir().join(src.trim_start_matches("./")),
                dst.to_string(),
            )
        })
        .collect()
}

/// The service whose network namespace `service` uses (itself without `network_mode`).
fn netns_owner<'a>(services: &'a Value, name: &'a str) -> &'a str {
    match services[name].get("network_mode") {
        None => name,
        Some(m) => str_of(m, "network_mode")
            .strip_prefix("service:")
            .unwrap_or_else(|| panic!("{name}: network_mode {m}")),
    }
}

/// The published ports of a service: container port to (host address, host port).
fn published(service: &Value) -> BTreeMap<u16, (String, u16)> {
    let mut out = BTreeMap::new();
    for p in service["ports"].as_array().into_iter().flatten() {
        let p = str_of(p, "port");
        let parts: Vec<&str> = p.split(':').collect();
        let (ip, host, container) = match parts[..] {
            [ip, h, c] => (ip, h, c),
            [h, c] => ("0.0.0.0", h, c),
            _ => panic!("{p}: write host:container or ip:host:container"),
        };
        out.insert(
            container.parse().unwrap(),
            (ip.to_string(), host.parse().unwrap()),
        );
    }
    out
}

/// The service running the gateway: the one built from deploy/Dockerfile.
fn compose_gateway(c: &Value) -> (&str, &Value) {
    let services = c["services"].as_object().unwrap();
    let gws: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s.pointer("/build/dockerfile") == Some(&Value::from("deploy/Dockerfile")))
        .collect();
    assert_eq!(gws.len(), 1, "one service built from deploy/Dockerfile");
    (gws[0].0.as_str(), gws[0].1)
}

/// Copies a service's bind mounts under `fs` (a stand-in for the container's root) and
/// returns where its `--config` is there.
fn materialise_container_files(service: &Value, fs: &Path) -> PathBuf {
    fn copy(src: &Path, dst: &Path) {
        if src.is_dir() {
            std::fs::create_dir_all(dst).unwrap();
            for e in std::fs::read_dir(src).unwrap() {
                let p = e.unwrap().path();
                copy(&p, &dst.join(p.file_name().unwrap()));
            }
        } else {
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(src, dst).unwrap();
        }
    }
    for (src, dst) in binds(service) {
        copy(&src, &fs.join(dst.trim_start_matches('/')));
    }
    let args: Vec<String> = service["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| str_of(a, "command").to_string())
        .collect();
    assert_cli_accepts(&args, "the compose gateway's command");
    fs.join(config_flag(&args, "compose gateway").trim_start_matches('/'))
}

#[test]
fn compose_gateway_config_passes_check_as_mounted_in_its_container() {
    let c = compose();
    let (_, gw) = compose_gateway(&c);
    let fs = tempfile::tempdir().unwrap();
    let config = materialise_container_files(gw, fs.path());
    assert!(config.is_file(), "--config is not on a bind mount");
    // Everything the configuration reads (policies, secret files) is in the container.
    assert_checks(&config, &BTreeMap::new(), "compose gateway");
}

#[test]
fn compose_services_mount_existing_files_and_publish_the_gateway_ports() {
    let c = compose();
    let services = &c["services"];
    for (name, s) in services.as_object().unwrap() {
        for (src, _) in binds(s) {
            assert!(
                src.exists(),
                "{name}: mounts {} which does not exist",
                src.display()
            );
        }
        if let Some(b) = s.get("build") {
            let ctx = compose_dir().join(str_of(&b["context"], "build.context"));
            assert!(ctx.join(str_of(&b["dockerfile"], "dockerfile")).is_file());
            assert!(ctx.join("Cargo.toml").is_file(), "{name}: build context");
        }
        if let Some(deps) = s.get("depends_on") {
            for dep in deps.as_object().unwrap().keys() {
                assert!(
                    services.get(dep).is_some(),
                    "{name} depends on unknown {dep}"
                );
            }
        }
    }

    let (name, gw) = compose_gateway(&c);
    let config = document(&read(&compose_dir().join("gateway.yaml")), "gateway.yaml");
    let mounted = binds(gw);
    assert!(
        mounted
            .iter()
            .any(|(src, dst)| src == &compose_dir().join("gateway.yaml")
                && Some(dst.as_str()) == compose_config_path(gw).as_deref()),
        "the gateway's --config is not deploy/compose/gateway.yaml"
    );
    let owner = &services[netns_owner(services, name)];
    let ports = published(owner);
    let public = url::Url::parse(str_of(&config["public_url"], "public_url")).unwrap();
    let listen = port_of(str_of(&config["listen"][0]["address"], "listen"));
    let (ip, host_port) = ports
        .get(&listen)
        .unwrap_or_else(|| panic!("listener port {listen} is not published"));
    // The browser reaches the gateway at public_url.
    assert_eq!(Some(*host_port), public.port_or_known_default());
    assert_eq!(ip.as_str(), public.host_str().unwrap());
    let admin = port_of(str_of(&config["admin"]["address"], "admin"));
    let (ip, _) = ports
        .get(&admin)
        .unwrap_or_else(|| panic!("admin port {admin} is not published"));
    assert!(
        ip.parse::<IpAddr>().unwrap().is_loopback(),
        "admin published beyond loopback"
    );
}

/// The container path of the gateway's `--config`.
fn compose_config_path(service: &Value) -> Option<String> {
    let args: Vec<String> = service["command"]
        .as_array()?
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    Some(config_flag(&args, "compose gateway"))
}

#[test]
fn compose_provider_app_and_redis_share_the_gateways_network_and_match_its_config() {
    let c = compose();
    let services = &c["services"];
    let (gw_name, _) = compose_gateway(&c);
    let owner_name = netns_owner(services, gw_name);
    let owner = &services[owner_name];
    let config = document(&read(&compose_dir().join("gateway.yaml")), "gateway.yaml");
    let public = str_of(&config["public_url"], "public_url");
    let secret_file = |r: &Value| -> String {
        let f = str_of(&r["file"], "secret file");
        read(&compose_dir().join(f)).trim_end().to_string()
    };

    // The provider: Dex, in the same network namespace, so its loopback issuer is the
    // same URL for the browser (through the published port) and for the gateway.
    let (dex_name, dex) = services
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, s)| str_of(&s["image"], "image").contains("dexidp/dex"))
        .expect("a Dex service");
    assert_eq!(netns_owner(services, dex_name), owner_name);
    let (dex_file, _) = binds(dex)
        .into_iter()
        .find(|(_, dst)| {
            dex["command"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a.as_str() == Some(dst.as_str()))
        })
        .expect("Dex's config is a bind mount");
    let dex_cfg = document(&read(&dex_file), "dex.yaml");
    let providers = config["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 1);
    let p = &providers[0];
    let issuer = url::Url::parse(str_of(&p["issuer"], "issuer")).unwrap();
    assert_eq!(
        dex_cfg["issuer"], p["issuer"],
        "Dex's issuer is the provider's"
    );
    let issuer_port = issuer.port_or_known_default().unwrap();
    assert!(issuer
        .host_str()
        .unwrap()
        .parse::<IpAddr>()
        .unwrap()
        .is_loopback());
    assert_eq!(
        port_of(str_of(&dex_cfg["web"]["http"], "web.http")),
        issuer_port
    );
    assert_eq!(
        published(owner).get(&issuer_port).map(|(_, h)| *h),
        Some(issuer_port),
        "the issuer's port is published as itself, for the browser"
    );
    let client = dex_cfg["staticClients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cl| cl["id"] == p["client_id"])
        .expect("Dex registers the gateway's client_id");
    assert_eq!(
        str_of(&client["secret"], "secret"),
        secret_file(&p["client_secret"])
    );
    let callback = format!("{public}/.portcullis/callback");
    assert!(
        client["redirectURIs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == callback.as_str()),
        "Dex does not allow the redirect URI {callback}"
    );
    assert_eq!(dex["environment"]["DEX_EXPAND_ENV"], "false");

    // Redis and the app: on the gateway's loopback.
    let store = url::Url::parse(str_of(&config["session"]["store"]["url"], "url")).unwrap();
    assert!(store
        .host_str()
        .unwrap()
        .parse::<IpAddr>()
        .unwrap()
        .is_loopback());
    let redis = services
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, s)| str_of(&s["image"], "image").starts_with("redis:"))
        .expect("a Redis service");
    assert_eq!(netns_owner(services, redis.0), owner_name);
    assert_eq!(store.port().unwrap_or(6379), 6379);
    let app = services
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, s)| str_of(&s["image"], "image").starts_with("traefik/whoami"))
        .expect("the demo app");
    assert_eq!(netns_owner(services, app.0), owner_name);
    let targets = named_targets(&config);
    assert!(
        targets.is_empty(),
        "host names in the compose config: {targets:?}"
    );
    let target = str_of(&config["upstreams"]["app"]["targets"][0], "target");
    assert_eq!(
        port_of(target).to_string(),
        str_of(
            &app.1["environment"]["WHOAMI_PORT_NUMBER"],
            "WHOAMI_PORT_NUMBER"
        )
    );
}

// ---------------------------------------------------------------------------------
// systemd.

/// The unit's `key=value` lines, several values per key kept in order.
fn unit() -> BTreeMap<String, Vec<String>> {
    let text = read(&deploy().join("systemd/portcullis.service"));
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        assert!(!line.ends_with('\\'), "line continuations: teach the test");
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{line}"));
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

/// A unit command line split into words (the unit quotes nothing).
fn words(line: &str) -> Vec<String> {
    assert!(
        !line.contains(['"', '\'']),
        "quoting: teach the test: {line}"
    );
    assert!(
        !line.starts_with(['-', '@', '+', '!', ':']),
        "command prefixes: teach the test: {line}"
    );
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn systemd_unit_is_hardened_and_restarts_on_failure() {
    let u = unit();
    let one = |k: &str| -> &str {
        let v = u.get(k).unwrap_or_else(|| panic!("no {k}="));
        assert_eq!(v.len(), 1, "{k}= given twice");
        &v[0]
    };
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert!(one("DynamicUser") == "yes" || u.contains_key("User"));
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    // SIGTERM is the graceful stop; the stop timeout leaves room for the 5 s grace.
    assert_eq!(one("KillSignal"), "SIGTERM");
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > 5);
}

#[tokio::test]
async fn systemd_unit_exec_start_runs_the_gateway_and_exec_reload_reloads_it() {
    let u = unit();
    let start = words(&u["ExecStart"][0]);
    assert_eq!(u["ExecStart"].len(), 1);
    assert!(
        start[0].starts_with('/'),
        "ExecStart needs an absolute path"
    );
    assert!(start[0].ends_with("/portcullis"));
    assert_eq!(start[1], "run");
    assert_cli_accepts(&start[1..], "ExecStart");
    let unit_config = config_flag(&start, "ExecStart");
    let bin = env!("CARGO_BIN_EXE_portcullis");

    // The unit's command line, with the binary and the configuration of this test.
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    write_config(
        dir.path(),
        &gateway_yaml(
            port,
            admin_port,
            &upstream_app(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        ),
        &[("routes.yaml", "routes:\n  - name: a\n    match: { path_prefix: / }\n    upstream: app\n    auth: public\n")],
    );
    let config = dir.path().join("gateway.yaml").display().to_string();
    let local = |w: &String| -> String {
        if w == &start[0] {
            bin.to_string()
        } else if w == &unit_config {
            config.clone()
        } else {
            w.clone()
        }
    };
    let args: Vec<String> = start[1..].iter().map(local).collect();
    let running = Running::start(
        Path::new(bin),
        &args,
        &BTreeMap::new(),
        admin_port,
        dir.path().join("log"),
    )
    .await;
    let before = running
        .metric("portcullis_config_reloads_total{result=\"success\"}", None)
        .await
        .unwrap();

    // Each ExecReload line in order, as systemd runs them ($MAINPID is the gateway).
    let reloads = &u["ExecReload"];
    assert!(!reloads.is_empty(), "no ExecReload=");
    for line in reloads {
        let w: Vec<String> = words(line)
            .iter()
            .map(|w| local(w).replace("$MAINPID", &running.child.id().to_string()))
            .collect();
        if w[0] == bin {
            assert_cli_accepts(&w[1..], "ExecReload");
        }
        let out = Command::new(&w[0]).args(&w[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "ExecReload={line} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reloaded = eventually(Duration::from_secs(10), || async {
        let n = running
            .metric("portcullis_config_reloads_total{result=\"success\"}", None)
            .await?;
        (n > before).then_some(n)
    })
    .await;
    assert!(
        reloaded.is_some(),
        "ExecReload did not reload the gateway:\n{}",
        read(&running.log)
    );
}

// ---------------------------------------------------------------------------------
// The image.

/// The Dockerfile's instructions as (stage index, instruction, arguments), with
/// continuation lines joined.
fn dockerfile() -> Vec<(usize, String, String)> {
    let text = read(&deploy().join("Dockerfile")).replace("\\\n", " ");
    let mut stage = 0;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (ins, rest) = line.split_once(' ').unwrap_or((line, ""));
        let ins = ins.to_ascii_uppercase();
        if ins == "FROM" {
            stage += 1;
        }
        out.push((stage, ins, rest.trim().to_string()));
    }
    out
}

/// The final stage's `USER` as (uid, gid).
fn dockerfile_user() -> (u64, u64) {
    let d = dockerfile();
    let last = d.iter().map(|(s, _, _)| *s).max().unwrap();
    let user = d
        .iter()
        .rev()
        .find(|(s, i, _)| *s == last && i == "USER")
        .map(|(_, _, a)| a.clone())
        .expect("the runtime stage sets USER");
    let (u, g) = user.split_once(':').unwrap_or((&user, &user));
    (
        u.parse().expect("a numeric USER"),
        g.parse().expect("a numeric group"),
    )
}

/// A `.dockerignore` line: a path (with `*` alone as "everything"), maybe negated.
fn dockerignored(path: &str) -> bool {
    let text = read(&root().join(".dockerignore"));
    let mut ignored = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (neg, pat) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pat = pat.trim_end_matches('/');
        assert!(
            pat == "*" || !pat.contains(['*', '?', '[']),
            "{line}: teach the test this pattern"
        );
        if pat == "*" || path == pat || path.starts_with(&format!("{pat}/")) {
            ignored = !neg;
        }
    }
    ignored
}

#[test]
fn dockerfile_copies_every_file_the_build_reads_and_runs_as_numeric_non_root() {
    let d = dockerfile();
    let stages = d.iter().map(|(s, _, _)| *s).max().unwrap();
    assert!(stages >= 2, "a multi-stage build");
    // The build stage: what it copies from the context.
    let copied: Vec<String> = d
        .iter()
        .filter(|(s, i, a)| *s == 1 && i == "COPY" && !a.starts_with("--from"))
        .flat_map(|(_, _, a)| {
            let w: Vec<&str> = a.split_whitespace().collect();
            w[..w.len() - 1]
                .iter()
                .map(|x| x.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let covered = |path: &str| {
        copied
            .iter()
            .any(|c| path == c || path.starts_with(&format!("{c}/")))
    };

    // Cargo's inputs, and every file `include_str!`/`include_bytes!` reads from src/.
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src/main.rs".to_string(),
        "src/lib.rs".to_string(),
    ];
    fn includes(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                includes(&p, root, out);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for m in ["include_str!(\"", "include_bytes!(\""] {
                for (i, _) in text.match_indices(m) {
                    let rel = text[i + m.len()..].split('"').next().unwrap();
                    let mut full = p.parent().unwrap().to_path_buf();
                    for c in Path::new(rel).components() {
                        match c {
                            std::path::Component::ParentDir => {
                                full.pop();
                            }
                            other => full.push(other),
                        }
                    }
                    out.push(
                        full.strip_prefix(root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
    }
    let before = needed.len();
    includes(&root().join("src"), &root(), &mut needed);
    assert!(needed.len() > before, "src/demo.rs embeds deploy/demo");
    for path in &needed {
        assert!(root().join(path).is_file(), "{path} does not exist");
        assert!(covered(path), "the Dockerfile does not COPY {path}");
        assert!(!dockerignored(path), ".dockerignore leaves out {path}");
    }
    assert!(dockerignored("target/debug/portcullis"));
    assert!(dockerignored("tests/oidc-provider/node_modules/x"));

    let runs: Vec<&String> = d
        .iter()
        .filter(|(s, i, _)| *s == 1 && i == "RUN")
        .map(|(_, _, a)| a)
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "a --locked release build"
    );

    // The runtime stage: a numeric non-root user, the binary, `run --config`.
    let (uid, gid) = dockerfile_user();
    assert!(uid != 0 && gid != 0);
    let last: Vec<&(usize, String, String)> = d.iter().filter(|(s, _, _)| *s == stages).collect();
    let json_args = |ins: &str| -> Vec<String> {
        let a = &last
            .iter()
            .find(|(_, i, _)| i == ins)
            .unwrap_or_else(|| panic!("no {ins}"))
            .2;
        serde_json::from_str(a).unwrap_or_else(|e| panic!("{ins} in exec form: {e}"))
    };
    let entry = json_args("ENTRYPOINT");
    assert_eq!(entry.len(), 1);
    assert!(last
        .iter()
        .any(|(_, i, a)| i == "COPY" && a.starts_with("--from=") && a.ends_with(&entry[0])));
    let cmd = json_args("CMD");
    assert_cli_accepts(&cmd, "CMD");
    // The configuration path the image expects is where Kubernetes and compose put it.
    let image_config = config_flag(&cmd, "CMD");
    let objs = k8s_objects();
    let gw = gateway_deployment(&objs);
    assert_eq!(config_flag(&args_of(gw.container), "k8s"), image_config);
    assert_eq!(
        compose_config_path(compose_gateway(&compose()).1),
        Some(image_config)
    );
}

#[test]
fn dockerfile_builder_rust_is_new_enough_for_the_locked_dependencies() {
    let from = dockerfile()
        .into_iter()
        .find(|(s, i, _)| *s == 1 && i == "FROM")
        .unwrap()
        .2;
    let image = from.split_whitespace().next().unwrap();
    let tag = image
        .strip_prefix("rust:")
        .expect("the build stage is a rust image");
    let version = |v: &str| -> (u64, u64) {
        let mut it = v.split(['.', '-']).map(|x| x.parse::<u64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let have = version(tag);
    assert!(have.0 >= 1 && have.1 > 0, "pin a Rust version: {image}");

    // The newest rust-version among the packages a release build compiles (normal and
    // build dependencies for Linux on this machine's architecture; not dev ones).
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(&triple)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions: BTreeMap<&str, Option<&str>> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (str_of(&p["id"], "id"), p["rust_version"].as_str()))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (str_of(&n["id"], "id"), n))
        .collect();
    let mut todo = vec![str_of(&meta["resolve"]["root"], "root")];
    let mut seen = BTreeSet::new();
    let mut newest = ((0, 0), String::new());
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        if let Some(Some(v)) = versions.get(id) {
            if version(v) > newest.0 {
                newest = (version(v), id.to_string());
            }
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let built = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if built {
                todo.push(str_of(&dep["pkg"], "pkg"));
            }
        }
    }
    assert!(seen.len() > 50, "walked {} packages", seen.len());
    assert!(
        have >= newest.0,
        "{image} is older than Rust {}.{}, which {} needs",
        newest.0 .0,
        newest.0 .1,
        newest.1
    );
}
