//! The launcher pod's network request, as KubeVirt's virt-controller writes
//! it on a `virt-launcher` pod: one entry per multus network of the VM in
//! the `k8s.v1.cni.cncf.io/networks` annotation (with the pod interface name
//! KubeVirt chooses and the interface's `macAddress`), and a multus network
//! marked `default: true` in `v1.multus-cni.io/default-network`.
//!
//! Standalone mode builds launcher pods with it; in a cluster KubeVirt does.

use std::collections::BTreeMap;

use netattach::selection::NetworkSelection;
use netattach::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION};
use sha2::{Digest, Sha256};

use crate::spec::Vm;

/// The pod interface KubeVirt (v1.0 and later) names for a secondary
/// network: `pod` and the first 11 hex digits of the SHA-256 of the VM
/// network's name. Older KubeVirt used `net1`, `net2`, ...; the binder reads
/// the actual name from network-status either way.
pub fn pod_interface_name(network: &str) -> String {
    let digest = Sha256::digest(network.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("pod{}", &hex[..11])
}

/// `namespace/name` or `name` of a multus network, split.
fn split(network_name: &str) -> (Option<&str>, &str) {
    match network_name.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, network_name),
    }
}

/// The annotations of the VM's launcher pod that select its networks.
pub fn pod_annotations(vm: &Vm) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut selections = Vec::new();
    for net in &vm.spec.networks {
        let Some(m) = &net.multus else { continue };
        let (namespace, name) = split(&m.network_name);
        if m.default {
            out.insert(
                DEFAULT_NETWORK_ANNOTATION.to_string(),
                m.network_name.clone(),
            );
            continue;
        }
        let mut sel = NetworkSelection::named(Some(namespace.unwrap_or(&vm.namespace)), name);
        sel.interface = Some(pod_interface_name(&net.name));
        sel.mac = vm
            .interfaces()
            .iter()
            .find(|i| i.name == net.name)
            .and_then(|i| i.mac_address.clone());
        selections.push(sel);
    }
    if !selections.is_empty() {
        out.insert(
            NETWORKS_ANNOTATION.to_string(),
            serde_json::to_string(&selections).unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_follow_kubevirt() {
        let vm = Vm::parse(
            r#"
kind: VirtualMachine
metadata: {name: vm1, namespace: tenant}
spec:
  template:
    spec:
      domain:
        devices:
          interfaces:
          - {name: default, masquerade: {}}
          - {name: blue, bridge: {}, macAddress: "02:00:00:00:00:0b"}
          - {name: green, bridge: {}}
      networks:
      - {name: default, pod: {}}
      - {name: blue, multus: {networkName: blue}}
      - {name: green, multus: {networkName: infra/green}}
"#,
        )
        .unwrap();
        let a = pod_annotations(&vm);
        assert!(!a.contains_key(DEFAULT_NETWORK_ANNOTATION));
        let sel: Vec<NetworkSelection> = serde_json::from_str(&a[NETWORKS_ANNOTATION]).unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(sel[0].name, "blue");
        assert_eq!(sel[0].namespace.as_deref(), Some("tenant"));
        assert_eq!(sel[0].mac.as_deref(), Some("02:00:00:00:00:0b"));
        assert_eq!(sel[1].namespace.as_deref(), Some("infra"));
        assert_eq!(sel[1].mac, None);
        // sha256("blue") = 16477688c0e0...
        assert_eq!(sel[0].interface.as_deref(), Some("pod16477688c0e"));
        assert_eq!(pod_interface_name("green").len(), 14);
        // Names fit the kernel's 15 bytes and are valid interface names.
        netattach::selection::check_ifname(&pod_interface_name("green")).unwrap();
    }

    #[test]
    fn default_multus_network_replaces_the_pod_network() {
        let vm = Vm::parse(
            r#"{"metadata":{"name":"v"},"spec":{"domain":{"devices":{"interfaces":[
                {"name":"a","bridge":{}}]}},
                "networks":[{"name":"a","multus":{"networkName":"ns/red","default":true}}]}}"#,
        )
        .unwrap();
        let a = pod_annotations(&vm);
        assert_eq!(a[DEFAULT_NETWORK_ANNOTATION], "ns/red");
        assert!(!a.contains_key(NETWORKS_ANNOTATION));
    }
}
