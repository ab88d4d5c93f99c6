//! The `CNI_*` environment a runtime passes to a plugin.

use std::path::PathBuf;

use super::error::{code, CniError};

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
        }
    }
}

/// The parsed environment of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub command: Option<Command>,
    pub container_id: String,
    /// Empty when the runtime has no namespace any more (a second DEL).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as the runtime sent it.
    pub args: String,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates the variables `CNI_COMMAND` needs.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let raw = get("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&raw).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                if raw.is_empty() {
                    "CNI_COMMAND is not set".to_string()
                } else {
                    format!(
                        "CNI_COMMAND {raw:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS"
                    )
                },
            )
        })?;
        let env = Env {
            command: Some(command),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args: get("CNI_ARGS").unwrap_or_default(),
            path: get("CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        let mut missing = Vec::new();
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        if needs_container {
            if env.container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if env.ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
        }
        if matches!(command, Command::Add | Command::Check) && env.netns.is_empty() {
            missing.push("CNI_NETNS");
        }
        if command != Command::Version && env.path.is_empty() {
            missing.push("CNI_PATH");
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "{} {}: required variable not set",
                    command.as_str(),
                    missing.join(", ")
                ),
            ));
        }
        if needs_container {
            validate_container_id(&env.container_id)?;
            netattach::selection::check_ifname(&env.ifname)
                .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {e}")))?;
        }
        Ok(env)
    }

    pub fn command(&self) -> Command {
        self.command.unwrap_or(Command::Version)
    }

    /// `CNI_ARGS` split into key/value pairs (`K=V;K2=V2`).
    pub fn arg_pairs(&self) -> Vec<(&str, &str)> {
        parse_args(&self.args)
    }

    /// One `CNI_ARGS` value.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.arg_pairs()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }
}

pub fn parse_args(args: &str) -> Vec<(&str, &str)> {
    args.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect()
}

/// The spec allows alphanumerics, underscore, dot and hyphen, starting alphanumeric.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID {id:?} has characters the spec does not allow"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_all_variables() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/opt/cni/bin")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_CONTAINERID"));
        assert!(e.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn del_without_netns_is_fine() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/a:/b"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns",
            ),
        ])
        .unwrap();
        assert_eq!(e.command(), Command::Del);
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.arg("K8S_POD_NAME"), Some("p"));
        assert_eq!(e.arg("MISSING"), None);
    }

    #[test]
    fn bad_values_rejected() {
        assert_eq!(
            env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code,
            code::INVALID_ENV
        );
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/a"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"));
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }
}
