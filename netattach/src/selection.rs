//! The pod annotation `k8s.v1.cni.cncf.io/networks`, in both forms the NPWG
//! spec defines: a comma separated short form (`name`, `ns/name`,
//! `ns/name@ifname`) and a JSON list of network selection elements.

use serde::{Deserialize, Serialize};

/// Errors in a network selection annotation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("parse network selection JSON: {0}")]
    Json(String),
    #[error("network selection element {index}: {reason}")]
    Element { index: usize, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// One network a pod asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSelection {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "interfaceRequest"
    )]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "macRequest")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "ipRequest")]
    pub ips: Vec<String>,
    /// Gateways that should carry the pod's default route through this network.
    #[serde(
        rename = "default-route",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_route: Vec<String>,
    #[serde(
        rename = "portMappings",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub port_mappings: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<serde_json::Value>,
    #[serde(rename = "cni-args", default, skip_serializing_if = "Option::is_none")]
    pub cni_args: Option<serde_json::Map<String, serde_json::Value>>,
}

impl NetworkSelection {
    /// A selection of `name` in `namespace` with nothing else requested.
    pub fn named(namespace: Option<&str>, name: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            ..Default::default()
        }
    }

    /// The namespace to look the NAD up in, given the pod's namespace.
    pub fn namespace_or<'a>(&'a self, pod_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(pod_namespace)
    }
}

/// Parses the annotation value. An empty or blank value selects nothing.
pub fn parse(value: &str) -> Result<Vec<NetworkSelection>> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let list = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        parse_json(trimmed)?
    } else {
        trimmed
            .split(',')
            .enumerate()
            .map(|(index, item)| {
                parse_short(item.trim()).map_err(|reason| Error::Element { index, reason })
            })
            .collect::<Result<Vec<_>>>()?
    };
    for (index, sel) in list.iter().enumerate() {
        validate(sel).map_err(|reason| Error::Element { index, reason })?;
    }
    Ok(list)
}

fn parse_json(text: &str) -> Result<Vec<NetworkSelection>> {
    if text.starts_with('{') {
        let one: NetworkSelection =
            serde_json::from_str(text).map_err(|e| Error::Json(e.to_string()))?;
        return Ok(vec![one]);
    }
    serde_json::from_str(text).map_err(|e| Error::Json(e.to_string()))
}

/// Parses one `[namespace/]name[@interface]` item.
pub fn parse_short(item: &str) -> std::result::Result<NetworkSelection, String> {
    if item.is_empty() {
        return Err("empty network name".into());
    }
    let (rest, interface) = match item.split_once('@') {
        Some((rest, ifname)) => (rest, Some(ifname.to_string())),
        None => (item, None),
    };
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
        None => (None, rest.to_string()),
    };
    Ok(NetworkSelection {
        name,
        namespace,
        interface,
        ..Default::default()
    })
}

fn validate(sel: &NetworkSelection) -> std::result::Result<(), String> {
    check_dns_name("network name", &sel.name)?;
    if let Some(ns) = &sel.namespace {
        check_dns_name("namespace", ns)?;
    }
    if let Some(ifname) = &sel.interface {
        check_ifname(ifname)?;
    }
    if let Some(mac) = &sel.mac {
        check_mac(mac)?;
    }
    for ip in &sel.ips {
        let addr = ip.split('/').next().unwrap_or_default();
        if addr.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP {ip:?}"));
        }
    }
    for gw in &sel.default_route {
        if gw.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid default-route gateway {gw:?}"));
        }
    }
    Ok(())
}

/// Kubernetes object names: lower case alphanumerics, '-' and '.', at most 253.
fn check_dns_name(what: &str, name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("invalid {what} {name:?}"))
    }
}

/// Linux interface names: 1 to 15 bytes, no '/', no whitespace, not "." or "..".
pub fn check_ifname(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!("invalid interface name {name:?}"))
    }
}

fn check_mac(mac: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid MAC {mac:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_all_shapes() {
        let l = parse("a, other/b ,c@eth7,ns2/d@in0").unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(l[0], NetworkSelection::named(None, "a"));
        assert_eq!(l[1], NetworkSelection::named(Some("other"), "b"));
        assert_eq!(l[2].interface.as_deref(), Some("eth7"));
        assert_eq!(l[3].namespace.as_deref(), Some("ns2"));
        assert_eq!(l[3].interface.as_deref(), Some("in0"));
    }

    #[test]
    fn json_form_with_requests() {
        let l = parse(
            r#"[{"name":"br","namespace":"vms","interface":"blue","mac":"02:00:00:00:00:01",
                "ips":["10.9.0.5/24"],"default-route":["10.9.0.1"]},{"name":"mv"}]"#,
        )
        .unwrap();
        assert_eq!(l[0].namespace_or("default"), "vms");
        assert_eq!(l[0].mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(l[0].ips, vec!["10.9.0.5/24"]);
        assert_eq!(l[0].default_route, vec!["10.9.0.1"]);
        assert_eq!(l[1].namespace_or("default"), "default");
    }

    #[test]
    fn blank_selects_nothing() {
        assert!(parse("  ").unwrap().is_empty());
    }

    #[test]
    fn malformed_is_rejected_with_the_element() {
        assert!(matches!(parse("[{\"name\":"), Err(Error::Json(_))));
        assert!(matches!(
            parse("a,,b"),
            Err(Error::Element { index: 1, .. })
        ));
        assert!(matches!(
            parse("Bad_Name"),
            Err(Error::Element { index: 0, .. })
        ));
        assert!(matches!(
            parse("a@this-name-is-too-long"),
            Err(Error::Element { .. })
        ));
        assert!(matches!(
            parse(r#"[{"name":"a","mac":"zz"}]"#),
            Err(Error::Element { .. })
        ));
        assert!(matches!(
            parse(r#"[{"name":"a","ips":["300.1.1.1/24"]}]"#),
            Err(Error::Element { .. })
        ));
        assert!(matches!(
            parse(r#"[{"namespace":"x"}]"#),
            Err(Error::Json(_))
        ));
    }
}
