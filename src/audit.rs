//! The audit log: one JSON object per line for every decision someone may later ask
//! about (a session ended, a login failed or was held back, a request denied), to
//! stdout or a file.
//!
//! Writing never blocks the request path: events go through a bounded queue to a
//! writer thread; when the queue is full the event is dropped and counted
//! (`portcullis_audit_events_dropped_total`). Users appear only as a pseudonym (a
//! prefix of the hashed issuer and subject, the same id the session store uses), never
//! by name, email or `sub`; no cookie, token or code is ever written.

use crate::metrics::Metrics;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Events queued at most; beyond, events are dropped and counted.
const QUEUE: usize = 16_384;

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutput {
    Stdout,
    File(PathBuf),
    /// No audit log.
    Off,
}

/// Lines sent to a writer thread through a bounded queue: `send` never blocks; when
/// the queue is full the line is dropped and `send` says so. Used by the audit log and
/// the access log.
pub struct LineQueue {
    tx: SyncSender<String>,
}

impl LineQueue {
    /// Starts the thread `name` writing lines to `writer`.
    pub fn start(mut writer: Box<dyn Write + Send>, name: &str) -> Result<LineQueue, String> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let _ = writer.write_all(line.as_bytes());
                    // Flush when the queue is empty: lines are not held back in a buffer.
                    while let Ok(more) = rx.try_recv() {
                        let _ = writer.write_all(more.as_bytes());
                    }
                    let _ = writer.flush();
                }
            })
            .map_err(|e| format!("cannot start the {name} writer: {e}"))?;
        Ok(LineQueue { tx })
    }

    /// Queues `line` (which ends in a newline); false when it was dropped.
    pub fn send(&self, line: String) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The sink events are sent to.
pub struct Audit {
    pub output: AuditOutput,
    queue: Option<LineQueue>,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// Opens the output (the file, in append mode) and starts the writer thread.
    pub fn new(output: AuditOutput, metrics: Arc<Metrics>) -> Result<Audit, String> {
        let writer: Box<dyn Write + Send> = match &output {
            AuditOutput::Off => {
                return Ok(Audit {
                    output,
                    queue: None,
                    metrics,
                })
            }
            AuditOutput::Stdout => Box::new(std::io::stdout()),
            AuditOutput::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("audit log {}: {e}", p.display()))?,
            ),
        };
        Ok(Audit {
            output,
            queue: Some(LineQueue::start(writer, "portcullis-audit")?),
            metrics,
        })
    }

    /// Records `event` with the fields of the JSON object `fields` (`ts` and `event`
    /// are added).
    pub fn emit(&self, event: &str, fields: Value) {
        let Some(queue) = &self.queue else {
            return;
        };
        let mut obj = Map::new();
        obj.insert("ts".into(), Value::String(now_rfc3339()));
        obj.insert("event".into(), Value::String(event.into()));
        if let Value::Object(f) = fields {
            obj.extend(f);
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        if !queue.send(line) {
            self.metrics.audit_dropped();
        }
    }
}

/// The pseudonymous id of a user: a prefix of their hashed issuer and subject.
pub fn pseudonym(user_key: &str) -> String {
    user_key.chars().take(16).collect()
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let a = Audit::new(AuditOutput::File(path.clone()), Arc::new(Metrics::new())).unwrap();
        a.emit("session-ended", serde_json::json!({ "reason": "logout" }));
        let line = (0..200)
            .find_map(|_| {
                let t = std::fs::read_to_string(&path).unwrap_or_default();
                if t.ends_with('\n') {
                    Some(t)
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    None
                }
            })
            .expect("the line is written");
        let v: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["event"], "session-ended");
        assert_eq!(v["reason"], "logout");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
