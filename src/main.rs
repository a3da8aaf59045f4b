//! The `portcullis` command: `run`, `check` and `demo`.

use clap::{Parser, Subcommand};
use portcullis::{config, demo, server};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the proxy allocates small, short-lived buffers from
/// several threads at once, where glibc's arena locks showed up in profiles (see
/// bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Customer-identity authentication gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Path of gateway.yaml (policies are found relative to it).
        #[arg(long, short, default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Validate the configuration and print one line per route; exit 1 on any error.
    Check {
        #[arg(long, short, default_value = "gateway.yaml")]
        config: PathBuf,
        /// Also show what the gateway would do with a request, e.g.
        /// `--request 'GET /admin/..;/' --host shop.example.com` (repeatable).
        #[arg(long, value_name = "METHOD TARGET")]
        request: Vec<String>,
        /// Host header for `--request` (absolute-form targets carry their own).
        #[arg(long)]
        host: Option<String>,
    },
    /// Explain the risk decision for a described request to a route: every signal and
    /// its points, the thresholds, and what the gateway would do.
    Explain {
        #[arg(long, short, default_value = "gateway.yaml")]
        config: PathBuf,
        /// The route (its name in the policies).
        #[arg(long)]
        route: String,
        /// The client's address now.
        #[arg(long)]
        client_ip: Option<std::net::IpAddr>,
        /// The client's User-Agent now.
        #[arg(long)]
        user_agent: Option<String>,
        /// The address the session signed in from (default: the same as now).
        #[arg(long)]
        signed_in_from: Option<std::net::IpAddr>,
        /// The User-Agent at sign-in (default: the same as now).
        #[arg(long)]
        signed_in_user_agent: Option<String>,
        /// The session's provider (default: the route's first).
        #[arg(long)]
        provider: Option<String>,
        /// The session's `acr` value.
        #[arg(long)]
        acr: Option<String>,
        /// How long ago the user authenticated at the provider, e.g. 2h.
        #[arg(long, value_parser = humantime::parse_duration)]
        auth_age: Option<std::time::Duration>,
        /// Failed logins counted against the client's address.
        #[arg(long, default_value_t = 0)]
        recent_failures: u64,
        /// Distinct accounts seen signing in from the client's address (credential
        /// stuffing).
        #[arg(long, default_value_t = 0)]
        accounts_from_address: u64,
        /// Sign-ups started from the client's address (sign-up velocity).
        #[arg(long, default_value_t = 0)]
        signups_from_address: u64,
        /// How long ago the session was created, e.g. 3h (impossible travel; default:
        /// the same as --auth-age, else now).
        #[arg(long, value_parser = humantime::parse_duration)]
        session_age: Option<std::time::Duration>,
    },
    /// Run the gateway on its embedded defaults in front of a demo app (not for production).
    Demo {
        /// Port of the gateway (loopback only).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port of the admin listener (loopback only).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
    },
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    // `run` logs as its configuration says; everything else in text at info.
    if !matches!(command, Command::Run { .. }) {
        portcullis::logging::init(&portcullis::logging::LoggingSpec::default());
    }
    match command {
        Command::Check {
            config,
            request,
            host,
        } => check(&config, &request, host.as_deref()),
        Command::Run { config } => run(&config),
        Command::Demo { port, admin_port } => run_demo(port, admin_port),
        Command::Explain {
            config,
            route,
            client_ip,
            user_agent,
            signed_in_from,
            signed_in_user_agent,
            provider,
            acr,
            auth_age,
            recent_failures,
            accounts_from_address,
            signups_from_address,
            session_age,
        } => explain(
            &config,
            &route,
            Described {
                client_ip,
                signed_in_from: signed_in_from.or(client_ip),
                signed_in_user_agent: signed_in_user_agent.or_else(|| user_agent.clone()),
                user_agent,
                provider,
                acr,
                auth_age,
                session_age: session_age.or(auth_age),
                counts: portcullis::risk::AddressCounts {
                    failures: recent_failures,
                    accounts: accounts_from_address,
                    signups: signups_from_address,
                },
            },
        ),
    }
}

/// A request and its session, as told on the command line.
struct Described {
    client_ip: Option<std::net::IpAddr>,
    user_agent: Option<String>,
    signed_in_from: Option<std::net::IpAddr>,
    signed_in_user_agent: Option<String>,
    provider: Option<String>,
    acr: Option<String>,
    auth_age: Option<std::time::Duration>,
    session_age: Option<std::time::Duration>,
    counts: portcullis::risk::AddressCounts,
}

/// Prints the risk decision for a described request, computed by the functions the
/// request path uses (`risk::assess`, `risk::verdict`, `policy::step_up_needed`).
fn explain(path: &std::path::Path, route_name: &str, d: Described) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let Some(route) = cfg.routes.iter().find(|r| r.name == route_name) else {
        eprintln!(
            "error: no route {route_name:?} (routes: {})",
            cfg.routes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::FAILURE;
    };
    let rr = &route.identity.risk;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let provider = d
        .provider
        .or_else(|| route.identity.providers.first().cloned())
        .unwrap_or_default();
    let session = portcullis::session::Session {
        provider: provider.clone(),
        acr: d.acr.clone(),
        auth_time: Some(now_s.saturating_sub(d.auth_age.map_or(0, |a| a.as_secs()))),
        client_ip: d.signed_in_from.map(|i| i.to_string()),
        user_agent: d.signed_in_user_agent.clone(),
        created_ms: (now_s.saturating_sub(d.session_age.map_or(0, |a| a.as_secs()))) * 1000,
        ..Default::default()
    };
    let facts = portcullis::risk::Facts {
        client_ip: d.client_ip,
        user_agent: d.user_agent.as_deref(),
        now_s,
        counts: d.counts,
    };
    let mode = rr.mode.unwrap_or(cfg.risk.mode);
    println!(
        "route {} (auth {}), risk mode {}",
        route.name,
        route.auth.as_str(),
        mode.label()
    );
    if let Some(geo) = &cfg.risk.geoip {
        let place = |ip: Option<std::net::IpAddr>| {
            ip.and_then(|i| geo.db.locate(i))
                .and_then(|p| p.country_code().map(str::to_string))
                .unwrap_or_else(|| "not in the GeoIP database".into())
        };
        println!(
            "client address: {}; signed in from: {}",
            place(d.client_ip),
            place(d.signed_in_from)
        );
    }
    let a = portcullis::risk::assess(&cfg.risk, rr, &session, &facts);
    println!("score {} = {}", a.score, a.explain());
    let step = route.identity.step_up.as_ref();
    let step_needed = step.and_then(|st| portcullis::policy::step_up_needed(st, &session, now_s));
    match (rr.deny_at, rr.step_up_at, step) {
        (None, None, None) => println!("the route decides nothing by risk"),
        _ => {
            if let Some(t) = rr.deny_at {
                println!("deny at {t} or more");
            }
            if let (Some(st), Some(t)) = (step, rr.step_up_at) {
                println!("step up to {} at {t} or more", st.acr.level);
            } else if let Some(st) = step {
                println!("step up to {} on every request", st.acr.level);
            }
        }
    }
    let v = portcullis::risk::verdict(rr, a.score, step_needed.is_some());
    let lacking = match (step_needed, step) {
        (Some("authentication-too-old"), _) => "authenticated too long ago".to_string(),
        (Some(_), Some(st)) => format!("below {}", st.acr.level),
        _ => String::new(),
    };
    let plain_step = rr.step_up_at.is_none() && step_needed.is_some();
    let (outcome, why) = match v.outcome {
        "deny" => (
            "deny (403 risk-too-high)",
            format!("the score reached {}", v.threshold.unwrap_or(0)),
        ),
        "step-up" => (
            "step up (risk-step-up)",
            format!(
                "the score reached {} and the session is {lacking}",
                v.threshold.unwrap_or(0)
            ),
        ),
        _ if plain_step => (
            "step up (step-up-required)",
            format!(
                "the route always asks: the session is {}",
                step_needed.unwrap_or("")
            ),
        ),
        _ => ("allow", "no threshold reached".to_string()),
    };
    let taken = if mode == config::RiskMode::Shadow && v.outcome != "allow" {
        " [shadow: reported, not taken]"
    } else {
        ""
    };
    println!("decision: {outcome}: {why}{taken}");
    ExitCode::SUCCESS
}

fn check(path: &std::path::Path, requests: &[String], host: Option<&str>) -> ExitCode {
    match config::load(path) {
        Ok(cfg) if !requests.is_empty() => explain_requests(cfg, requests, host),
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            for r in &cfg.routes {
                println!(
                    "route {:<20} {:<7} -> {:<12} {}  ({}{})",
                    r.name,
                    r.auth.as_str(),
                    r.upstream.as_deref().unwrap_or("-"),
                    r.matcher.describe(),
                    r.file.display(),
                    r.line.map(|l| format!(":{l}")).unwrap_or_default()
                );
            }
            println!(
                "ok: {} route(s), {} upstream(s), {} listener(s)",
                cfg.routes.len(),
                cfg.upstreams.len(),
                cfg.listeners.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s); configuration not valid", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Prints, for each `METHOD TARGET`, how the gateway would normalise and route it. Uses
/// the same functions as the request path, so what it says is what the gateway does.
fn explain_requests(
    cfg: config::GatewayConfig,
    requests: &[String],
    host: Option<&str>,
) -> ExitCode {
    let metrics = std::sync::Arc::new(portcullis::metrics::Metrics::new());
    let clock: std::sync::Arc<dyn portcullis::clock::Clock> =
        std::sync::Arc::new(portcullis::clock::SystemClock);
    let rt = match portcullis::runtime::Runtime::build(cfg, None, &metrics, &clock, 1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for r in requests {
        let Some((method, target)) = r.trim().split_once(' ') else {
            eprintln!("error: --request takes \"METHOD TARGET\", got {r:?}");
            return ExitCode::FAILURE;
        };
        print!("{method} {target}: ");
        let routed = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| "bad-method")
            .and_then(|m| {
                portcullis::proxy::check_method(&m)?;
                portcullis::proxy::route_request(
                    &rt,
                    &m,
                    target.as_bytes(),
                    host.map(str::as_bytes).into_iter(),
                    None,
                )
            });
        let r = match routed {
            Ok(r) => r,
            Err("missing-host") => {
                println!("400 missing-host (give --host)");
                continue;
            }
            Err(reason) => {
                println!("400 {reason}");
                continue;
            }
        };
        let forwarded = r.target.normalized.forward_target();
        if r.target
            .normalized
            .match_path()
            .starts_with(portcullis::endpoints::PREFIX)
        {
            println!(
                "answered by the gateway itself (its {} endpoints)",
                portcullis::endpoints::PREFIX
            );
            continue;
        }
        match r.route.map(|i| &rt.routes[i]) {
            None => println!("404 no-route (host {}, path {forwarded})", r.host),
            Some(route) => {
                use portcullis::config::AuthMode;
                let who = match route.auth {
                    AuthMode::Deny => {
                        println!("403 route-denied by route {}", route.name);
                        continue;
                    }
                    AuthMode::Public => "public".to_string(),
                    AuthMode::Login if route.identity.api => format!(
                        "login, api: sessions from {}; 401 without one",
                        route.identity.providers.join(", ")
                    ),
                    AuthMode::Login => format!(
                        "login: sessions from {}; browsers without one are sent to log in, other clients get 401",
                        route.identity.providers.join(", ")
                    ),
                    AuthMode::Bearer => format!(
                        "bearer: access tokens from {}; 401 without one",
                        route.identity.providers.join(", ")
                    ),
                    AuthMode::LoginOrBearer => format!(
                        "login_or_bearer: a bearer token or a session from {}",
                        route.identity.providers.join(", ")
                    ),
                };
                let upstream = route
                    .upstream
                    .as_ref()
                    .map_or("-", |u| u.spec.name.as_str());
                println!(
                    "route {} ({who}) -> upstream {upstream} as {forwarded}",
                    route.name
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn run(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s); not starting", errors.len());
            return ExitCode::FAILURE;
        }
    };
    portcullis::logging::init(&cfg.logging);
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    let listeners: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| {
            format!(
                "{}{}",
                if l.tls.is_some() {
                    "https://"
                } else {
                    "http://"
                },
                l.addr
            )
        })
        .collect();
    let admin = cfg.admin.addr;
    match server::build(cfg, Vec::new()) {
        Ok((server, gw)) => {
            log::info!(
                "portcullis listening on {}; admin on http://{admin}",
                listeners.join(", ")
            );
            server::run(server, gw);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(port: u16, admin_port: u16) -> ExitCode {
    let (app_port, idp_port) = match (demo::free_port(), demo::free_port()) {
        (Ok(a), Ok(i)) if a != i => (a, i),
        _ => {
            eprintln!("error: no free ports for the demo app and identity provider");
            return ExitCode::FAILURE;
        }
    };
    // A fresh directory of our own (created exclusively, random name), so nobody can plant
    // policy files in it beforehand.
    let dir = std::env::temp_dir().join(format!(
        "portcullis-demo-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let ports = demo::DemoPorts {
        gateway: port,
        admin: admin_port,
        app: app_port,
        idp: idp_port,
    };
    let secret = portcullis::oidc::flow::random_token();
    let path = match demo::write_config(&dir, &ports, &secret) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: cannot write the demo configuration to {}: {e}",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let idp = match portcullis::devidp::DevIdp::new(
        format!("http://127.0.0.1:{idp_port}"),
        demo::DEMO_CLIENT_ID.to_string(),
        secret,
        format!("http://127.0.0.1:{port}/.portcullis/callback"),
    ) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: development identity provider: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let extra: Vec<Box<dyn pingora::services::ServiceWithDependents>> = vec![
        Box::new(demo::app_service(app_port)),
        Box::new(idp.service(idp_port)),
    ];
    match server::build(cfg, extra) {
        Ok((server, _gw)) => {
            println!();
            println!("  Portcullis demo is running (development only: plain http on loopback).");
            println!();
            println!("    Open      http://127.0.0.1:{port}/");
            println!(
                "    Sign in   http://127.0.0.1:{port}/account   (as a demo user; no password)"
            );
            println!("    Staff     http://127.0.0.1:{port}/staff     (group staff only)");
            println!("    Denied    http://127.0.0.1:{port}/admin");
            println!("    Metrics   http://127.0.0.1:{admin_port}/metrics");
            println!("    Config    {}", path.display());
            println!();
            println!(
                "  Sign-in goes to a development identity provider on http://127.0.0.1:{idp_port}"
            );
            println!("  built into this command. It has fixed users and no passwords: not for production.");
            println!();
            println!("  Try a spoofed identity header; the demo app will not see it:");
            println!("    curl -H 'X-Forwarded-User: admin' -H 'X_Auth_User: admin' http://127.0.0.1:{port}/");
            println!();
            println!("  Press Ctrl-C to stop.");
            println!();
            server.run_forever()
        }
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(e, server::StartError::Bind { .. }) {
                eprintln!("hint: choose other ports with --port and --admin-port");
            }
            ExitCode::FAILURE
        }
    }
}
