//! The Grafana dashboard (`deploy/grafana/portcullis.json`) and the Prometheus rules
//! (`deploy/prometheus/*.yaml`) against the metrics Portcullis exports: every metric they
//! query is one the gateway has, every label they match, group or print is one that
//! metric carries, every fixed label value they match is one the code writes, counters
//! are read through `rate()` or `increase()`, the dashboard covers the journeys the issue
//! lists and its queries parse (`promtool`), and the alerts the issue names exist, each
//! with a runbook and a promtool unit test that fires it.
//!
//! Which labels a metric has is learnt from the gateway itself, not from a table copied
//! out of `src/metrics.rs`: [`probe`] records one series of every metric through the
//! public recording methods and the rendered exposition is read back, so a label renamed
//! in the code is a label renamed here. A metric added without a line in [`probe`] fails
//! [`the_probe_records_a_series_of_every_exported_metric`], which says what to add.

use portcullis::config::JourneyStep;
use portcullis::metrics::Metrics;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------
// Files.

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/portcullis.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rule files under `deploy/prometheus` (every `*.yaml` but the promtool unit tests,
/// `*.test.yaml`), parsed with the YAML crate the gateway uses.
fn rule_files() -> Vec<(PathBuf, Value)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/prometheus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".yaml") && !name.ends_with(".test.yaml")
        })
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no rule files in deploy/prometheus");
    paths.into_iter().map(|p| (p.clone(), yaml(&p))).collect()
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str::<Value>(&read(path))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alert_tests() -> Value {
    yaml(&root().join("deploy/prometheus/alerts.test.yaml"))
}

/// Every rule of every rule file, with the file it is in.
fn rules() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (path, doc) in rule_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let groups = doc["groups"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no groups"));
        for g in groups {
            for r in g["rules"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: a group without rules"))
            {
                out.push((file.clone(), r.clone()));
            }
        }
    }
    out
}

fn alerts() -> Vec<(String, Value)> {
    rules()
        .into_iter()
        .filter(|(_, r)| r.get("alert").is_some())
        .collect()
}

fn str_at<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no string {key}"))
}

/// Every panel, rows' nested panels included (a collapsed row holds its own).
fn panels(dash: &Value) -> Vec<Value> {
    fn walk(list: &Value, out: &mut Vec<Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p.clone());
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// (panel title, expr, legendFormat) of every panel query.
fn dashboard_queries(dash: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            let legend = t["legendFormat"].as_str().unwrap_or("").to_string();
            out.push((title, expr.to_string(), legend));
        }
    }
    out
}

fn variables(dash: &Value) -> Vec<Value> {
    dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A query variable's query: a string, or (Grafana 10 and later) `{ query: ... }`.
fn variable_query(v: &Value) -> Option<String> {
    match &v["query"] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("query").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// What Portcullis exports, learnt from the gateway.

/// Labels Prometheus adds to every scraped series (the target's), allowed everywhere.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Labels whose values come from the configuration (names of routes, providers, ...),
/// so their values are not in the source.
const CONFIG_LABELS: &[&str] = &[
    "route",
    "provider",
    "upstream",
    "limit",
    "population",
    "step",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A counter, or a histogram's `_bucket`, `_sum` or `_count` series.
    Counter,
    Gauge,
}

struct Exported {
    /// Every series name (histograms by their `_bucket`, `_sum` and `_count`), with its
    /// label names.
    series: BTreeMap<String, (Kind, BTreeSet<String>)>,
    /// The metric families rendered (histograms by their own name).
    families: BTreeSet<String>,
    /// `Metrics::names()`.
    names: BTreeSet<String>,
    /// All of `src/`, for checking that a fixed label value is one the code writes.
    source: String,
    /// Series recorded by the rules in deploy/prometheus (their own expressions are
    /// checked instead).
    recorded: BTreeSet<String>,
}

/// A `Metrics` with one series of every metric, recorded through the public methods the
/// gateway itself calls.
fn probe() -> Metrics {
    let m = Metrics::new();
    m.login_started("login");
    m.login_sent("login", "p");
    m.login_callback("login", "p");
    m.login_completed("login", "p", 1.0);
    m.login_failed("login", "p", "state-mismatch");
    m.login_abandoned("login", "p");
    m.auth_refused("r", "user-unauthenticated");
    m.store_result("get", false);
    m.store_duration("get", 0.001);
    m.provider_up("p", true);
    m.provider_request("p", "token", 0.1);
    m.provider_error("p", "token", "unreachable");
    m.jwks_fetch("p", true);
    m.session_created(Some("customers"));
    m.sessions_ended("logout", 1);
    m.sessions_active(1);
    m.backchannel_logout("p", "success");
    m.token_refresh("p", "success");
    m.logout_notification(true);
    m.rate_limited("l", "r");
    m.rate_limit_fallback("l", false);
    m.login_regulated("ban", "ip");
    m.risk_decision("r", "allow", "enforce", "none");
    m.step_up_challenged("r", "acr-insufficient");
    m.step_up("r", "completed", "ok");
    m.audit_dropped();
    let step = JourneyStep {
        name: "checkout".into(),
        step: "cart".into(),
    };
    m.route("r", Some(&step)).record(200, 0.01);
    m.request_rejected("bad-path");
    m.upstream_error("u", "timeout");
    m.upstream_healthy_targets("u", 1);
    m.config_reload(true);
    m
}

fn source_text() -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push_str(&read(&p));
            }
        }
    }
    let mut out = String::new();
    walk(&root().join("src"), &mut out);
    out
}

fn exported() -> Exported {
    let m = probe();
    let text = String::from_utf8(m.render()).unwrap();
    let mut types = BTreeMap::new();
    let mut series: BTreeMap<String, (Kind, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            types.insert(w.next().unwrap().to_string(), w.next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap();
        let name = &line[..end];
        let mut labels = BTreeSet::new();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').unwrap();
            let parsed = parse(&format!("x{{{}}}", &line[end + 1..close]));
            assert!(parsed.problems.is_empty(), "{line}: {:?}", parsed.problems);
            labels.extend(parsed.selectors[0].matchers.iter().map(|m| m.label.clone()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        let kind = match types.get(family).map(String::as_str) {
            Some("counter" | "histogram") => Kind::Counter,
            Some("gauge") => Kind::Gauge,
            t => panic!("{name}: unexpected type {t:?}"),
        };
        series
            .entry(name.to_string())
            .or_insert((kind, BTreeSet::new()))
            .1
            .extend(labels);
    }
    Exported {
        series,
        families: types.keys().cloned().collect(),
        names: m.names().iter().cloned().collect(),
        source: source_text(),
        recorded: rules()
            .iter()
            .filter_map(|(_, r)| r["record"].as_str().map(String::from))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------
// A small PromQL reader: enough to find selectors, their label matchers, the labels of
// grouping clauses, and the function a selector is read through.

#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug, Clone)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
    /// Followed by a range (`[5m]`).
    range: bool,
    /// The function or aggregation whose argument it is (`rate`, `sum`, "" at top level).
    func: String,
}

#[derive(Debug, Default)]
struct Parsed {
    selectors: Vec<Selector>,
    /// Labels named by `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: Vec<String>,
    problems: Vec<String>,
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_ws(c: &[char], mut i: usize) -> usize {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Reads a quoted string starting at `c[i]`; returns its value and the index after it.
fn read_string(c: &[char], i: usize) -> Option<(String, usize)> {
    let quote = *c.get(i)?;
    if !matches!(quote, '"' | '\'' | '`') {
        return None;
    }
    let mut out = String::new();
    let mut j = i + 1;
    while j < c.len() {
        match c[j] {
            '\\' if quote != '`' && j + 1 < c.len() => {
                out.push(c[j + 1]);
                j += 2;
            }
            ch if ch == quote => return Some((out, j + 1)),
            ch => {
                out.push(ch);
                j += 1;
            }
        }
    }
    None
}

fn read_ident(c: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < c.len() && is_ident(c[i]) {
        i += 1;
    }
    (c[start..i].iter().collect(), i)
}

/// Reads `label op "value", ...}` from after a `{`; returns the matchers and the index
/// after the `}`.
fn read_matchers(c: &[char], mut i: usize, problems: &mut Vec<String>) -> (Vec<Matcher>, usize) {
    let mut out = Vec::new();
    loop {
        i = skip_ws(c, i);
        match c.get(i) {
            None => {
                problems.push("unclosed {".into());
                return (out, i);
            }
            Some('}') => return (out, i + 1),
            Some(',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let (label, j) = read_ident(c, i);
        if label.is_empty() {
            problems.push(format!(
                "cannot read a label matcher at {:?}",
                c[i..].iter().collect::<String>()
            ));
            return (out, c.len());
        }
        i = skip_ws(c, j);
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| c[i..].iter().take(op.len()).copied().eq(op.chars()))
            .unwrap_or_default();
        if op.is_empty() {
            problems.push(format!("label {label}: no operator"));
            return (out, c.len());
        }
        i = skip_ws(c, i + op.len());
        let Some((value, j)) = read_string(c, i) else {
            problems.push(format!("label {label}: value not quoted"));
            return (out, c.len());
        };
        i = j;
        out.push(Matcher {
            label,
            op: op.to_string(),
            value,
        });
    }
}

fn parse(expr: &str) -> Parsed {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Parsed::default();
    let mut stack: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if let Some((_, j)) = read_string(&c, i) {
            i = j;
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else if ch == '[' {
            // A range or subquery: durations, or a Grafana variable standing for one.
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch == '$' {
            i += 1;
            while i < c.len() && (is_ident(c[i]) || c[i] == '{' || c[i] == '}') {
                i += 1;
            }
        } else if ch == '(' {
            stack.push(pending.take().unwrap_or_default());
            i += 1;
        } else if ch == ')' {
            stack.pop();
            i += 1;
        } else if ch == '{' {
            out.problems
                .push("a selector without a metric name (name the metric)".into());
            let (_, j) = read_matchers(&c, i + 1, &mut out.problems);
            i = j;
        } else if is_ident_start(ch) {
            let (word, j) = read_ident(&c, i);
            let next = skip_ws(&c, j);
            if GROUPING.contains(&word.as_str()) {
                i = j;
                if c.get(next) == Some(&'(') {
                    let mut k = next + 1;
                    loop {
                        k = skip_ws(&c, k);
                        match c.get(k) {
                            Some(')') | None => break,
                            Some(',') => k += 1,
                            Some(_) => {
                                let (label, e) = read_ident(&c, k);
                                if label.is_empty() {
                                    out.problems.push(format!("{word}: cannot read its labels"));
                                    break;
                                }
                                out.grouping.push(label);
                                k = e;
                            }
                        }
                    }
                    i = k + 1;
                }
            } else if AGGREGATIONS.contains(&word.as_str()) || c.get(next) == Some(&'(') {
                pending = Some(word);
                i = j;
            } else if KEYWORDS.contains(&word.as_str()) {
                i = j;
            } else {
                let mut matchers = Vec::new();
                i = j;
                if c.get(next) == Some(&'{') {
                    let (m, e) = read_matchers(&c, next + 1, &mut out.problems);
                    matchers = m;
                    i = e;
                }
                let after = skip_ws(&c, i);
                out.selectors.push(Selector {
                    metric: word,
                    matchers,
                    range: c.get(after) == Some(&'['),
                    func: stack.last().cloned().unwrap_or_default(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// What is wrong with `expr` against what Portcullis exports: unknown metrics, labels
/// the metric lacks, fixed values the code never writes, counters not read through a
/// rate, gauges read through one. `series_only` is for promtool test input series,
/// which are bare series, not queries.
fn check_expr(expr: &str, ex: &Exported, series_only: bool) -> Vec<String> {
    let parsed = parse(expr);
    let mut problems = parsed.problems.clone();
    let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    for s in &parsed.selectors {
        let metric = &s.metric;
        if ex.recorded.contains(metric) {
            continue;
        }
        if !metric.starts_with("portcullis_") {
            problems.push(format!("{metric}: not a Portcullis metric"));
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|x| metric.strip_suffix(x).filter(|b| ex.names.contains(*b)))
            .unwrap_or(metric);
        let Some((kind, has)) = ex.series.get(metric) else {
            let hint = if ex.names.contains(metric.as_str()) {
                " (a histogram: query its _bucket, _sum or _count)"
            } else {
                ""
            };
            problems.push(format!("{metric}: Portcullis exports no such series{hint}"));
            continue;
        };
        if !ex.names.contains(family) {
            problems.push(format!("{metric}: not in Metrics::names()"));
        }
        labels.extend(has.iter().cloned());
        for m in &s.matchers {
            if !has.contains(&m.label) && !TARGET_LABELS.contains(&m.label.as_str()) {
                problems.push(format!(
                    "{metric}: has no label {:?} (it has {has:?})",
                    m.label
                ));
                continue;
            }
            problems.extend(unknown_values(metric, m, ex));
        }
        if series_only {
            continue;
        }
        let rated = s.range && matches!(s.func.as_str(), "rate" | "increase" | "irate");
        match kind {
            Kind::Counter if !rated => problems.push(format!(
                "{metric}: a counter, read it through rate() or increase() over a range"
            )),
            Kind::Gauge if s.range || matches!(s.func.as_str(), "rate" | "increase" | "irate") => {
                problems.push(format!(
                    "{metric}: a gauge, not to be read through {}()",
                    s.func
                ))
            }
            _ => {}
        }
    }
    for g in &parsed.grouping {
        if !labels.contains(g) {
            problems.push(format!(
                "grouping by {g:?}: no metric of the expression has it ({labels:?})"
            ));
        }
    }
    problems
}

/// A matcher's fixed values that no string literal in `src/` has: a typo such as
/// `outcome="fail"` matches nothing and would make a panel or alert silently empty.
/// Labels whose values come from the configuration, and Grafana variables, are skipped.
fn unknown_values(metric: &str, m: &Matcher, ex: &Exported) -> Vec<String> {
    let configured = CONFIG_LABELS.contains(&m.label.as_str())
        || TARGET_LABELS.contains(&m.label.as_str())
        || (metric == "portcullis_journey_steps_total" && m.label == "journey");
    if configured || m.value.contains('$') {
        return Vec::new();
    }
    let literal = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let values: Vec<&str> = if m.op.contains('~') {
        let alts: Vec<&str> = m.value.split('|').collect();
        if !alts.iter().all(|a| literal(a)) {
            return Vec::new(); // a real regular expression: nothing to compare
        }
        alts
    } else {
        vec![m.value.as_str()]
    };
    values
        .into_iter()
        .filter(|v| !ex.source.contains(&format!("\"{v}\"")))
        .map(|v| {
            format!(
                "{metric}: {}{}{v:?}: the code never writes this value",
                m.label, m.op
            )
        })
        .collect()
}

/// `{{label}}` placeholders of a legend, or `{{ $labels.label }}` of an annotation.
fn placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(a) = rest.find("{{") {
        let after = &rest[a + 2..];
        let Some(b) = after.find("}}") else { break };
        let inner = after[..b].trim();
        if let Some(l) = inner.strip_prefix("$labels.") {
            out.push(l.split_whitespace().next().unwrap_or("").to_string());
        } else if !inner.is_empty() && inner.chars().all(is_ident) {
            out.push(inner.to_string());
        }
        rest = &after[b + 2..];
    }
    out
}

/// Placeholder labels that no metric of `expr` has.
fn unknown_placeholders(text: &str, expr: &str, ex: &Exported) -> Vec<String> {
    let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    for s in parse(expr).selectors {
        if let Some((_, l)) = ex.series.get(&s.metric) {
            labels.extend(l.iter().cloned());
        }
    }
    placeholders(text)
        .into_iter()
        .filter(|p| !labels.contains(p))
        .map(|p| format!("{{{{{p}}}}}: no metric of the expression has label {p:?}"))
        .collect()
}

/// A variable's `label_values(selector, label)` (or `label_values(label)`) checked like a
/// query; other queries are refused, so nothing goes unchecked.
fn check_variable_query(q: &str, ex: &Exported) -> Vec<String> {
    let q = q.trim();
    let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    else {
        return vec![format!("{q}: only label_values() queries are checked")];
    };
    let (selector, label) = match inner.rfind(',') {
        Some(k) => (&inner[..k], inner[k + 1..].trim()),
        None => ("", inner.trim()),
    };
    if selector.trim().is_empty() {
        return vec![format!(
            "{q}: name the metric, so the label is one of its own"
        )];
    }
    let mut problems = check_expr(selector, ex, true);
    if let Some(s) = parse(selector).selectors.first() {
        if let Some((_, has)) = ex.series.get(&s.metric) {
            if !has.contains(label) {
                problems.push(format!("{q}: {} has no label {label:?}", s.metric));
            }
        }
    }
    problems
}

/// Every `portcullis_...` word of a text (documentation, descriptions).
fn metric_words(text: &str) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if is_ident_start(c[i]) && (i == 0 || !is_ident(c[i - 1])) {
            let (w, j) = read_ident(&c, i);
            if w.starts_with("portcullis_") && w.len() > "portcullis_".len() {
                out.push(w);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn assert_no_problems(problems: Vec<String>, what: &str) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------------
// The checker itself.

#[test]
fn the_probe_records_a_series_of_every_exported_metric() {
    let ex = exported();
    let missing: Vec<&String> = ex.names.difference(&ex.families).collect();
    assert!(
        missing.is_empty(),
        "no series of {missing:?}: record one in probe() in tests/observability.rs, so \
         that its labels are known"
    );
    assert_eq!(
        ex.families, ex.names,
        "rendered families and Metrics::names() differ"
    );
    assert!(ex
        .series
        .contains_key("portcullis_login_duration_seconds_bucket"));
    assert!(ex.series["portcullis_login_failures_total"]
        .1
        .contains("reason"));
}

#[test]
fn the_checker_reports_misspelt_metrics_labels_values_and_misused_counters() {
    let ex = exported();
    let problems = |e: &str| check_expr(e, &ex, false).join("\n");
    let fine = [
        r#"sum by (provider, reason) (rate(portcullis_login_failures_total{journey="login",provider=~"$provider"}[5m]))"#,
        r#"histogram_quantile(0.95, sum by (le) (rate(portcullis_login_duration_seconds_bucket[$__rate_interval])))"#,
        r#"portcullis_session_store_up == 0"#,
        r#"increase(portcullis_config_reloads_total{result="error"}[10m]) > 0"#,
        r#"sum by (route) (rate(portcullis_step_ups_total{outcome=~"completed|failed|abandoned"}[15m]))"#,
        r#"time() - max by (instance) (portcullis_config_last_reload_success_timestamp_seconds)"#,
    ];
    for e in fine {
        assert_eq!(problems(e), "", "{e}");
    }
    let caught = [
        (
            "rate(portcullis_logins_typo_total[5m])",
            "portcullis_logins_typo_total: Portcullis exports no such series",
        ),
        (
            "rate(portcullis_login_started_total_bucket[5m])",
            "exports no such series",
        ),
        (
            "rate(portcullis_login_duration_seconds[5m])",
            "a histogram: query its _bucket",
        ),
        (
            r#"rate(portcullis_login_sent_total{reson="x"}[5m])"#,
            r#"has no label "reson""#,
        ),
        (
            "sum by (provder) (rate(portcullis_login_sent_total[5m]))",
            r#"grouping by "provder""#,
        ),
        (
            r#"rate(portcullis_step_ups_total{outcome="fial"}[5m])"#,
            r#"outcome="fial""#,
        ),
        (
            r#"rate(portcullis_step_ups_total{outcome=~"completed|faild"}[5m])"#,
            r#""faild""#,
        ),
        (
            "portcullis_login_sent_total > 0",
            "a counter, read it through rate()",
        ),
        ("rate(portcullis_sessions_active[5m])", "a gauge"),
        ("up == 0", "up: not a Portcullis metric"),
        (
            r#"{__name__=~"portcullis_.+"}"#,
            "a selector without a metric name",
        ),
    ];
    for (e, want) in caught {
        let got = problems(e);
        assert!(got.contains(want), "{e}: expected {want:?} in {got:?}");
    }
    assert!(
        unknown_placeholders("{{provder}}", "rate(portcullis_login_sent_total[5m])", &ex)
            .join("")
            .contains("provder")
    );
    assert!(
        check_variable_query("label_values(portcullis_provider_up, provder)", &ex)
            .join("")
            .contains("provder")
    );
    assert_eq!(
        metric_words("see `portcullis_login_sent_total{provider}` and portcullis_"),
        ["portcullis_login_sent_total"]
    );
}

// ---------------------------------------------------------------------------------
// The dashboard.

#[test]
fn dashboard_queries_use_only_exported_metrics_with_their_labels_and_values() {
    let ex = exported();
    let dash = dashboard();
    let mut problems = Vec::new();
    let queries = dashboard_queries(&dash);
    assert!(queries.len() > 30, "only {} queries", queries.len());
    for (title, expr, legend) in &queries {
        for p in check_expr(expr, &ex, false) {
            problems.push(format!("panel {title:?}: {p}\n    in {expr}"));
        }
        for p in unknown_placeholders(legend, expr, &ex) {
            problems.push(format!("panel {title:?} legend: {p}"));
        }
    }
    assert_no_problems(problems, "deploy/grafana/portcullis.json");
}

#[test]
fn dashboard_variables_query_exported_metrics_and_labels() {
    let ex = exported();
    let dash = dashboard();
    let mut problems = Vec::new();
    for v in variables(&dash) {
        if v["type"] == "query" {
            let name = v["name"].as_str().unwrap_or("?");
            let q = variable_query(&v).unwrap_or_else(|| panic!("variable {name}: no query"));
            for p in check_variable_query(&q, &ex) {
                problems.push(format!("variable {name}: {p}"));
            }
        }
    }
    // The login funnel's journey values are fixed by the code.
    let login_journey = variables(&dash)
        .into_iter()
        .find(|v| v["name"] == "login_journey")
        .expect("a login_journey variable");
    for value in login_journey["query"].as_str().unwrap().split(',') {
        let m = Matcher {
            label: "journey".into(),
            op: "=".into(),
            value: value.trim().into(),
        };
        problems.extend(unknown_values("portcullis_login_started_total", &m, &ex));
    }
    assert_no_problems(problems, "deploy/grafana/portcullis.json templating");
}

#[test]
fn dashboard_covers_the_funnel_failures_step_up_journeys_latency_and_errors() {
    let dash = dashboard();
    let used: BTreeSet<String> = dashboard_queries(&dash)
        .iter()
        .flat_map(|(_, e, _)| parse(e).selectors)
        .map(|s| s.metric)
        .collect();
    let required = [
        "portcullis_login_started_total",
        "portcullis_login_sent_total",
        "portcullis_login_callbacks_total",
        "portcullis_login_completed_total",
        "portcullis_login_abandoned_total",
        "portcullis_login_failures_total",
        "portcullis_login_duration_seconds_bucket",
        "portcullis_step_ups_total",
        "portcullis_journey_steps_total",
        "portcullis_requests_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_session_store_errors_total",
        "portcullis_provider_errors_total",
        "portcullis_config_reloads_total",
    ];
    let missing: Vec<&&str> = required.iter().filter(|m| !used.contains(**m)).collect();
    assert!(missing.is_empty(), "no panel queries {missing:?}");
}

#[test]
fn dashboard_shows_every_exported_metric() {
    let ex = exported();
    let dash = dashboard();
    let used: BTreeSet<String> = dashboard_queries(&dash)
        .iter()
        .flat_map(|(_, e, _)| parse(e).selectors)
        .map(|s| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| s.metric.strip_suffix(x).filter(|b| ex.names.contains(*b)))
                .unwrap_or(&s.metric)
                .to_string()
        })
        .collect();
    let unshown: Vec<&String> = ex.names.difference(&used).collect();
    assert!(
        unshown.is_empty(),
        "metrics on no panel of deploy/grafana/portcullis.json: {unshown:?}"
    );
}

#[test]
fn dashboard_has_the_rows_variables_and_datasource_of_an_importable_dashboard() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "portcullis");
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 36,
        "schemaVersion"
    );
    let all = panels(&dash);
    let rows: Vec<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Login funnel",
        "Failures by reason",
        "Step-up outcomes",
        "Named journeys",
        "Sessions",
        "Abuse",
        "Traffic & latency",
        "Dependencies",
        "Config reloads",
    ] {
        assert!(rows.contains(&want), "no row {want:?} in {rows:?}");
    }
    let vars = variables(&dash);
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["provider", "route", "journey"] {
        let q = variable_query(var(name)).unwrap();
        assert!(q.starts_with("label_values("), "{name}: {q}");
    }
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id of {title:?} repeated"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title:?} is wider than the dashboard"
        );
        if p["targets"].is_array() {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{title:?}: datasource"
            );
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{title:?}: target datasource"
                );
            }
        }
    }
}

/// Grafana variables replaced by what they stand for, so promtool can read the query:
/// `[$window]` and the like become `[5m]`, a variable in a label value becomes `x`.
fn without_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(k) = rest.find('$') {
        out.push_str(&rest[..k]);
        let after = &rest[k + 1..];
        let braced = after.starts_with('{');
        let body = if braced { &after[1..] } else { after };
        let n = body.find(|c: char| !is_ident(c)).unwrap_or(body.len());
        let in_range = out.ends_with('[');
        out.push_str(if in_range { "5m" } else { "x" });
        rest = &body[n + usize::from(braced)..];
    }
    out.push_str(rest);
    out
}

fn promtool() -> Command {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "promtool not found: apt-get install --no-install-recommends prometheus (.ci/run does)"
    );
    Command::new("promtool")
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let dash = dashboard();
    let rules: Vec<Value> = dashboard_queries(&dash)
        .iter()
        .enumerate()
        .map(|(i, (title, expr, _))| {
            serde_json::json!({
                "record": format!("dashboard:query_{i}"),
                "expr": without_variables(expr),
                "labels": { "panel": title },
            })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let out = promtool()
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules on the dashboard's queries:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        without_variables("rate(x{a=~\"$provider\"}[$__rate_interval])"),
        "rate(x{a=~\"x\"}[5m])"
    );
    assert_eq!(without_variables("x{a=\"${journey}\"}"), "x{a=\"x\"}");
}

#[test]
fn dashboard_and_readmes_mention_only_exported_metrics() {
    let ex = exported();
    let dash = dashboard();
    let mut texts = vec![(
        "deploy/grafana/portcullis.json".to_string(),
        serde_json::to_string(&dash).unwrap(),
    )];
    for f in [
        "deploy/grafana/README.md",
        "deploy/prometheus/README.md",
        "deploy/prometheus/alerts.yaml",
    ] {
        texts.push((f.to_string(), read(&root().join(f))));
    }
    let mut problems = Vec::new();
    for (file, text) in texts {
        for w in metric_words(&text) {
            if !ex.series.contains_key(&w) && !ex.names.contains(&w) {
                problems.push(format!("{file}: {w}"));
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert_no_problems(problems, "metric names Portcullis does not export");
}

// ---------------------------------------------------------------------------------
// The rules.

const RUNBOOK_PREFIX: &str =
    "https://github.com/portcullis/portcullis/blob/main/deploy/prometheus/README.md#";

#[test]
fn rules_use_only_exported_metrics_with_their_labels_and_values() {
    let ex = exported();
    let mut problems = Vec::new();
    for (file, r) in &rules() {
        let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
        let expr = str_at(r, "expr", name);
        for p in check_expr(expr, &ex, false) {
            problems.push(format!("{file} {name}: {p}"));
        }
        for text in r["annotations"]
            .as_object()
            .into_iter()
            .flat_map(|a| a.values())
        {
            for p in unknown_placeholders(text.as_str().unwrap_or(""), expr, &ex) {
                problems.push(format!("{file} {name} annotation: {p}"));
            }
        }
    }
    assert_no_problems(problems, "deploy/prometheus");
}

#[test]
fn alert_unit_tests_feed_only_exported_series() {
    let ex = exported();
    let mut problems = Vec::new();
    for t in alert_tests()["tests"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap_or("?");
        for s in t["input_series"].as_array().into_iter().flatten() {
            let series = str_at(s, "series", name);
            for p in check_expr(series, &ex, true) {
                problems.push(format!("test {name:?}: {p}"));
            }
        }
    }
    assert_no_problems(problems, "deploy/prometheus/alerts.test.yaml");
}

#[test]
fn rules_have_the_alerts_the_issue_names() {
    let names: BTreeSet<String> = alerts()
        .iter()
        .map(|(_, r)| r["alert"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "PortcullisLoginSuccessRatioLow",
        "PortcullisLoginAbandonmentHigh",
        "PortcullisStepUpFailuresHigh",
        "PortcullisRateLimitedSurge",
        "PortcullisLoginBanSurge",
        "PortcullisSessionStoreErrors",
        "PortcullisSessionStoreDown",
        "PortcullisProviderErrors",
        "PortcullisProviderDown",
        "PortcullisConfigReloadFailed",
    ] {
        assert!(
            names.contains(want),
            "no alert {want} in deploy/prometheus ({names:?})"
        );
    }
    // The success ratio alert has a traffic guard, so one failed login does not page.
    let ratio = alerts()
        .into_iter()
        .find(|(_, r)| r["alert"] == "PortcullisLoginSuccessRatioLow")
        .unwrap()
        .1;
    let expr = ratio["expr"].as_str().unwrap();
    assert!(
        expr.contains("portcullis_login_completed_total")
            && expr.contains("portcullis_login_sent_total")
    );
    assert!(
        expr.contains("and") && expr.contains("increase(portcullis_login_sent_total"),
        "{expr}"
    );
}

/// GitHub's anchors of a Markdown file's headings.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_has_for_severity_summary_description_and_a_runbook_section() {
    let readme = read(&root().join("deploy/prometheus/README.md"));
    let sections = anchors(&readme);
    let mut problems = Vec::new();
    for (file, r) in alerts() {
        let name = r["alert"].as_str().unwrap();
        let what = format!("{file} {name}");
        if r["for"].as_str().is_none() {
            problems.push(format!("{what}: no for:"));
        }
        if !matches!(
            r["labels"]["severity"].as_str(),
            Some("critical" | "warning" | "info")
        ) {
            problems.push(format!("{what}: severity is not critical, warning or info"));
        }
        for a in ["summary", "description"] {
            if r["annotations"][a]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{what}: no {a}"));
            }
        }
        match r["annotations"]["runbook_url"]
            .as_str()
            .and_then(|u| u.strip_prefix(RUNBOOK_PREFIX))
        {
            None => problems.push(format!(
                "{what}: runbook_url does not start with {RUNBOOK_PREFIX}"
            )),
            Some(anchor) if !sections.contains(anchor) => problems.push(format!(
                "{what}: runbook anchor #{anchor} is no heading of deploy/prometheus/README.md"
            )),
            Some(anchor) if anchor != name.to_lowercase() => problems.push(format!(
                "{what}: runbook anchor #{anchor} is another alert's"
            )),
            Some(_) => {}
        }
    }
    assert_no_problems(problems, "alerts");
    assert!(
        readme.contains(RUNBOOK_PREFIX),
        "README.md says how to rewrite the runbook prefix"
    );
}

#[test]
fn every_alert_is_fired_by_a_promtool_unit_test() {
    let tests = alert_tests();
    let files: Vec<&str> = tests["rule_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let mut fired = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                fired.insert(a["alertname"].as_str().unwrap().to_string());
            }
        }
    }
    for (file, r) in alerts() {
        let name = r["alert"].as_str().unwrap();
        assert!(
            files.contains(&file.as_str()),
            "alerts.test.yaml does not load {file}"
        );
        assert!(
            fired.contains(name),
            "no test in alerts.test.yaml fires {name}"
        );
    }
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    let dir = root().join("deploy/prometheus");
    let files: Vec<PathBuf> = rule_files().into_iter().map(|(p, _)| p).collect();
    let out = promtool()
        .args(["check", "rules"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = promtool()
        .current_dir(&dir)
        .args(["test", "rules", "alerts.test.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
