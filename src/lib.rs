//! Portcullis: a customer-identity authentication gateway on Pingora.
//!
//! Modules map one-to-one onto the jobs in the request path; `proxy` puts them in order.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod cookies;
pub mod demo;
pub mod devidp;
pub mod endpoints;
pub mod geoip;
pub mod headers;
pub mod identity_headers;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod oidc;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod refresh;
pub mod regulation;
pub mod responses;
pub mod risk;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod session;
pub mod tasks;
pub mod upstream;
