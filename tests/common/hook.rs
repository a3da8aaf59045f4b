//! A receiver for `logout.notify`: records every JSON body posted to it.

use super::eventually;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Receives `logout.notify` events: every JSON body posted to it, in order.
pub struct Hook {
    pub addr: SocketAddr,
    events: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    pub async fn start() -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let events2 = events.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let events = events2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let events = events.clone();
                            async move {
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let v = serde_json::from_slice(&body).unwrap_or_else(
                                    |_| json!({ "unparsed": String::from_utf8_lossy(&body) }),
                                );
                                events.lock().unwrap().push(v);
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::new(),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Hook { addr, events, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The first event with `reason`, waiting for it to arrive (it is sent off the
    /// request path).
    pub async fn wait_for(&self, reason: &str) -> Value {
        eventually(Duration::from_secs(10), || async {
            self.events().into_iter().find(|e| e["reason"] == reason)
        })
        .await
        .unwrap_or_else(|| panic!("no {reason} event; got {:?}", self.events()))
    }
}
