//! The edge of the plugin: environment and stdin in, a result or a CNI error
//! object out. Everything below returns typed errors; only here do they
//! become the protocol's JSON and an exit status.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::config::{parse_supported_version, NetConf};
use crate::source::Services;
use crate::spec::{version, CniError, Command, Env};

/// Runs one invocation from the process environment and stdio; returns the
/// exit status. With `daemonSocket` in the config the binary is a shim that
/// forwards the call to the node agent ([`crate::daemon`]).
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        stdin.clear();
        tracing::warn!(error = %e, "read stdin");
    }
    let (out, status) = match crate::daemon::settings(&stdin) {
        Some((socket, timeout)) => {
            let req = crate::daemon::Request {
                env: crate::daemon::forwarded_env(std::env::vars()),
                stdin: String::from_utf8_lossy(&stdin).into_owned(),
            };
            crate::daemon::forward(&socket, timeout, req)
        }
        None => run(|k| std::env::var(k).ok(), &stdin),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    if std::env::var_os("VIRTLINK_CNI_STATS").is_some() {
        report_peak_rss();
    }
    status
}

/// For benchmarks: the process's peak resident set size, on stderr.
fn report_peak_rss() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        let kb = line.split_whitespace().nth(1).unwrap_or("0");
        eprintln!("virtlink-cni-stats peak_rss_kb={kb}");
    }
}

/// One invocation: returns what to print on stdout and the exit status.
pub fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, i32) {
    run_with(&Services::default(), get, stdin)
}

/// A CNI error as the plugin prints it: in the version the config asked for,
/// with exit status 1.
pub fn error_answer(stdin: &[u8], mut e: CniError) -> (String, i32) {
    e.cni_version = asked_version(stdin);
    tracing::error!(code = e.code, msg = %e.msg, "CNI call failed");
    (serde_json::to_string(&e).unwrap_or_else(|_| "{}".into()), 1)
}

/// One invocation inside a host process (the node agent) that provides
/// long-lived services such as a cached pod/NAD source.
pub fn run_with(
    services: &Services,
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> (String, i32) {
    let asked = asked_version(stdin);
    let fail = |e: CniError| error_answer(stdin, e);
    let env = match Env::from_lookup(&get) {
        Ok(env) => env,
        Err(e) => return fail(e),
    };
    if env.command() == Command::Version {
        return (version_answer(&asked), 0);
    }
    if crate::binding::is_binding_conf(stdin) {
        let conf = match crate::binding::BindingConf::parse(stdin) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        init_logging(conf.log_level.clone(), None, get("VIRTLINK_LOG"));
        return match crate::binding::run(&env, &conf) {
            Ok(Some(v)) => (serde_json::to_string(&v).unwrap_or_default(), 0),
            Ok(None) => (String::new(), 0),
            Err(e) => fail(e),
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_logging(
        conf.log_level.clone(),
        conf.log_file.as_deref(),
        get("VIRTLINK_LOG"),
    );
    let _span = tracing::info_span!(
        "cni",
        command = env.command().as_str(),
        container = %env.container_id,
        ifname = %env.ifname
    )
    .entered();
    let started = std::time::Instant::now();
    let outcome = match env.command() {
        Command::Add => crate::attach::add_with(&env, &conf, services).map(|r| Some(r.to_value())),
        Command::Del => crate::attach::del(&env, &conf).map(|()| None),
        Command::Check => crate::attach::check(&env, &conf).map(|()| None),
        Command::Gc => crate::attach::gc(&env, &conf).map(|()| None),
        Command::Status => crate::attach::status_with(&env, &conf, services).map(|()| None),
        Command::Version => Ok(None),
    };
    tracing::info!(
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = outcome.is_ok(),
        "done"
    );
    match outcome {
        Ok(Some(v)) => (serde_json::to_string(&v).unwrap_or_default(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => fail(e),
    }
}

/// The version to answer in: the config's, when it is one we speak.
fn asked_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| parse_supported_version(v).is_ok())
        .unwrap_or_else(|| version::LATEST.to_string())
}

fn version_answer(asked: &str) -> String {
    json!({ "cniVersion": asked, "supportedVersions": version::SUPPORTED }).to_string()
}

/// Logs go to the configured file, else stderr (the runtime keeps it); the
/// level comes from `logLevel` or `VIRTLINK_LOG`, default warn. A plain level
/// filter: it costs nothing to build at each exec, unlike a directive parser.
fn init_logging(
    log_level: Option<String>,
    log_file: Option<&std::path::Path>,
    env_level: Option<String>,
) {
    use tracing_subscriber::filter::LevelFilter;
    let level = log_level
        .or(env_level)
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false);
    let file = log_file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let _ = match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn call(vars: &[(&str, &str)], stdin: &str) -> (Value, i32) {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (out, status) = run(|k| m.get(k).cloned(), stdin.as_bytes());
        (serde_json::from_str(&out).unwrap_or(Value::Null), status)
    }

    #[test]
    fn version_lists_every_supported_version() {
        let (v, s) = call(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(s, 0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            version::SUPPORTED.len()
        );
    }

    #[test]
    fn errors_are_cni_error_objects_in_the_asked_version() {
        let (v, s) = call(
            &[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/x")],
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert_eq!(s, 1);
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));
    }
}
