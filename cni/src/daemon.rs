//! Daemon mode: the wire protocol between the `virtlink-cni` shim and the node
//! agent, and the shim's side of it.
//!
//! One CNI call per connection on a unix socket: the shim writes one JSON
//! [`Request`] (the `CNI_*` environment and stdin) and shuts down its write
//! half; the agent answers with one JSON [`Response`] (stdout and exit status)
//! and closes. The agent runs the call in-process with this crate's
//! [`crate::plugin::run_with`], so both modes share every line of CNI logic.
//!
//! When the agent cannot answer, the shim decides by verb (see docs/agent.md):
//! DEL, CHECK and GC run directly from the state on disk; ADD fails with
//! "try again later" (code 11) after undoing whatever an agent that died
//! mid-ADD left behind; STATUS reports the plugin as not available (code 50).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{code, CniError, Command};

/// Where the agent listens unless the config names another socket.
pub const DEFAULT_SOCKET: &str = "/run/virtlink/agent.sock";
/// How long the shim waits for the agent's answer by default: below
/// kubelet's default runtime request timeout (2 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(110);
/// The largest request or response either side accepts.
pub const MAX_MESSAGE: u64 = 1 << 20;

/// One CNI call, as the runtime made it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// `CNI_*` variables (and `VIRTLINK_LOG`).
    pub env: BTreeMap<String, String>,
    /// The network config the runtime wrote on stdin.
    pub stdin: String,
}

/// What the shim prints and the status it exits with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub stdout: String,
    pub status: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens (or may not be talked to): the agent never saw the call.
    #[error("connect to the agent at {path}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The request was sent but no complete answer came back: the agent may
    /// have done part of the work.
    #[error("the agent at {path} closed the connection without an answer")]
    Lost {
        path: PathBuf,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("the agent at {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("encode request: {0}")]
    Encode(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The daemon mode settings of a network config: `daemonSocket` (a path, or
/// `true` for [`DEFAULT_SOCKET`]) and `daemonTimeoutSeconds`. `None` when the
/// config does not ask for daemon mode (or is not JSON: direct mode then
/// reports the decode error).
pub fn settings(stdin: &[u8]) -> Option<(PathBuf, Duration)> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let path = match v.get("daemonSocket")? {
        Value::String(s) if !s.is_empty() => PathBuf::from(s),
        Value::Bool(true) => PathBuf::from(DEFAULT_SOCKET),
        _ => return None,
    };
    let timeout = v
        .get("daemonTimeoutSeconds")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    Some((path, timeout))
}

/// Sends one call to the agent and waits for its answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let body = serde_json::to_vec(req).map_err(|e| Error::Encode(e.to_string()))?;
    let mut stream = UnixStream::connect(socket).map_err(|source| Error::Unreachable {
        path: socket.to_path_buf(),
        source,
    })?;
    let lost = |source: Option<std::io::Error>| Error::Lost {
        path: socket.to_path_buf(),
        source,
    };
    let _ = stream.set_write_timeout(Some(timeout));
    stream
        .write_all(&body)
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| lost(Some(e)))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let mut answer = Vec::new();
    match stream.take(MAX_MESSAGE).read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Error::Timeout {
                path: socket.to_path_buf(),
                timeout,
            })
        }
        Err(e) => return Err(lost(Some(e))),
    }
    serde_json::from_slice(&answer).map_err(|_| lost(None))
}

/// The environment a shim forwards: every `CNI_*` variable and `VIRTLINK_LOG`.
pub fn forwarded_env(vars: impl Iterator<Item = (String, String)>) -> BTreeMap<String, String> {
    vars.filter(|(k, _)| k.starts_with("CNI_") || k == "VIRTLINK_LOG")
        .collect()
}

/// The shim: forwards the call to the agent at `socket`, or falls back as
/// described in the module docs. Returns stdout and the exit status.
pub fn forward(socket: &Path, timeout: Duration, req: Request) -> (String, i32) {
    let get = |k: &str| req.env.get(k).cloned();
    let stdin = req.stdin.as_bytes();
    let command = get("CNI_COMMAND").and_then(|c| Command::parse(&c));
    // VERSION and malformed environments need nothing from the agent.
    if matches!(command, None | Some(Command::Version)) {
        return crate::plugin::run(get, stdin);
    }
    let err = match call(socket, &req, timeout) {
        Ok(resp) => return (resp.stdout, resp.status),
        Err(e) => e,
    };
    let why = crate::error_chain(&err);
    match command {
        Some(Command::Del | Command::Check | Command::Gc) => {
            tracing::warn!(error = %why, "agent unavailable: running the call directly from on-disk state");
            crate::plugin::run(get, stdin)
        }
        Some(Command::Add) => {
            if matches!(err, Error::Lost { .. }) {
                // The agent may have attached networks before it died; its
                // state record (written before any delegate runs) tells DEL
                // what to undo.
                tracing::warn!(error = %why, "agent lost mid-ADD: undoing its partial work");
                let mut del_env = req.env.clone();
                del_env.insert("CNI_COMMAND".into(), "DEL".into());
                let (out, status) = crate::plugin::run(|k| del_env.get(k).cloned(), stdin);
                if status != 0 {
                    tracing::error!(output = %out, "cleanup DEL after a lost ADD failed");
                }
            }
            crate::plugin::error_answer(
                stdin,
                CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("ADD through the agent: {why}"),
                ),
            )
        }
        _ => crate::plugin::error_answer(
            stdin,
            CniError::new(code::PLUGIN_NOT_AVAILABLE, format!("agent: {why}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_config() {
        assert_eq!(settings(br#"{"cniVersion":"1.0.0"}"#), None);
        assert_eq!(settings(b"not json"), None);
        assert_eq!(
            settings(br#"{"daemonSocket":true}"#),
            Some((PathBuf::from(DEFAULT_SOCKET), DEFAULT_TIMEOUT))
        );
        assert_eq!(
            settings(br#"{"daemonSocket":"/x.sock","daemonTimeoutSeconds":3}"#),
            Some((PathBuf::from("/x.sock"), Duration::from_secs(3)))
        );
        assert_eq!(settings(br#"{"daemonSocket":false}"#), None);
    }

    #[test]
    fn unreachable_agent_add_is_retryable_and_version_is_local() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".to_string(), "ADD".to_string());
        env.insert("CNI_CONTAINERID".to_string(), "c1".to_string());
        env.insert("CNI_IFNAME".to_string(), "eth0".to_string());
        env.insert("CNI_NETNS".to_string(), "/proc/self/ns/net".to_string());
        env.insert("CNI_PATH".to_string(), "/nowhere".to_string());
        let stdin = r#"{"cniVersion":"1.0.0","name":"n","daemonSocket":"x"}"#.to_string();
        let (out, status) = forward(
            &sock,
            Duration::from_secs(1),
            Request {
                env: env.clone(),
                stdin: stdin.clone(),
            },
        );
        assert_eq!(status, 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], 11, "{out}");
        assert_eq!(v["cniVersion"], "1.0.0");

        env.insert("CNI_COMMAND".to_string(), "VERSION".to_string());
        let (out, status) = forward(&sock, Duration::from_secs(1), Request { env, stdin });
        assert_eq!(status, 0, "{out}");
        assert!(out.contains("supportedVersions"));
    }
}
