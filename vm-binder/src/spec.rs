//! The parts of a KubeVirt `VirtualMachine` / `VirtualMachineInstance` that
//! decide the VM's network interfaces, and their mapping to the launcher
//! pod's interfaces.

use serde::{Deserialize, Serialize};

use netattach::status::NetworkStatus;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parse VM spec")]
    Parse(#[source] serde_yaml::Error),
    #[error("VM spec has neither spec.template.spec.domain nor spec.domain")]
    NoDomain,
    #[error("interface {iface}: {reason}")]
    Interface { iface: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Any object with `metadata` and `spec`: a `VirtualMachine` (the VMI spec
/// is under `spec.template.spec`) or a `VirtualMachineInstance`.
#[derive(Debug, Clone, Deserialize)]
struct Object {
    #[serde(default)]
    metadata: Metadata,
    spec: ObjectSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ObjectSpec {
    #[serde(default)]
    template: Option<Template>,
    #[serde(flatten)]
    vmi: VmiSpec,
}

#[derive(Debug, Clone, Deserialize)]
struct Template {
    #[serde(default)]
    metadata: Metadata,
    spec: VmiSpec,
}

/// `VirtualMachineInstanceSpec`, only what networking needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmiSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    #[serde(default)]
    pub networks: Vec<Network>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    #[serde(default)]
    pub devices: Devices,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Devices {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
}

/// `spec.domain.devices.interfaces[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `ports[]` of a masquerade interface: the only ports forwarded to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// `TCP` (the default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl Port {
    /// The port's protocol; KubeVirt's default is TCP.
    pub fn protocol(&self) -> std::result::Result<Protocol, String> {
        match self
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some(other) => Err(format!("port {}: unknown protocol {other}", self.port)),
        }
    }
}

/// `spec.networks[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus: Option<Multus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Multus {
    /// `namespace/name` or `name` of a NetworkAttachmentDefinition.
    pub network_name: String,
    /// A multus network that replaces the pod network (it is `eth0`).
    #[serde(default)]
    pub default: bool,
}

/// How a VM interface is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingKind {
    Bridge,
    Masquerade,
    Sriov,
}

impl std::fmt::Display for BindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindingKind::Bridge => "bridge",
            BindingKind::Masquerade => "masquerade",
            BindingKind::Sriov => "sriov",
        })
    }
}

/// A VM after parsing: its name and its interfaces with their networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub namespace: String,
    pub spec: VmiSpec,
    /// The object's annotations, the template's overriding the VM's (e.g.
    /// [`DATAPATH_ANNOTATION`]).
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A VM annotation choosing the masquerade binding's datapath (`ebpf` or
/// `nftables`) over `BindOptions::datapath`.
pub const DATAPATH_ANNOTATION: &str = "virtlink.io/masquerade-datapath";

/// One VM interface, resolved against the launcher pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedInterface {
    /// The VM interface's name (`spec.domain.devices.interfaces[].name`).
    pub name: String,
    /// Position among the VM's interfaces (tap names use it: `tap<N>`).
    pub index: usize,
    pub binding: BindingKind,
    /// The network: `pod` for the pod network, else the multus `networkName`
    /// qualified with the VM's namespace.
    pub network: String,
    /// The launcher pod's interface the CNI plugin created for the network.
    pub pod_interface: String,
    pub mac: Option<String>,
    pub ports: Vec<Port>,
    /// The network-status entry of the network, when one was given.
    pub status: Option<NetworkStatus>,
}

impl Vm {
    /// Parses a `VirtualMachine` or `VirtualMachineInstance` in YAML or JSON.
    pub fn parse(text: &str) -> Result<Self> {
        let obj: Object = serde_yaml::from_str(text).map_err(Error::Parse)?;
        let (spec, meta) = match obj.spec.template {
            Some(t) => (t.spec, t.metadata),
            None => (obj.spec.vmi, Metadata::default()),
        };
        let mut annotations = obj.metadata.annotations;
        annotations.extend(meta.annotations);
        if spec.domain.is_none() {
            return Err(Error::NoDomain);
        }
        Ok(Self {
            name: meta
                .name
                .or(obj.metadata.name)
                .unwrap_or_else(|| "vm".to_string()),
            namespace: meta
                .namespace
                .or(obj.metadata.namespace)
                .unwrap_or_else(|| "default".to_string()),
            spec,
            annotations,
        })
    }

    pub fn interfaces(&self) -> &[Interface] {
        self.spec
            .domain
            .as_ref()
            .map(|d| d.devices.interfaces.as_slice())
            .unwrap_or_default()
    }

    /// Maps each VM interface to its network and the launcher pod's interface:
    /// the pod network (or a `default` multus network) is `eth0`; multus
    /// networks are `net1`, `net2`, ... in the order of `spec.networks`,
    /// unless `network_status` names their interface.
    pub fn plan(&self, network_status: &[NetworkStatus]) -> Result<Vec<PlannedInterface>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, iface) in self.interfaces().iter().enumerate() {
            let err = |reason: String| Error::Interface {
                iface: iface.name.clone(),
                reason,
            };
            if !seen.insert(iface.name.as_str()) {
                return Err(err("duplicate interface name".into()));
            }
            let binding = match (
                iface.bridge.is_some(),
                iface.masquerade.is_some(),
                iface.sriov.is_some(),
            ) {
                (true, false, false) => BindingKind::Bridge,
                (false, true, false) => BindingKind::Masquerade,
                (false, false, true) => BindingKind::Sriov,
                (false, false, false) => {
                    return Err(err(
                        "no binding (want one of bridge, masquerade, sriov)".into()
                    ))
                }
                _ => return Err(err("more than one binding".into())),
            };
            for p in &iface.ports {
                p.protocol().map_err(&err)?;
            }
            if !iface.ports.is_empty() && binding != BindingKind::Masquerade {
                return Err(err("ports are only allowed with masquerade".into()));
            }
            let (network, pod_interface) = self.pod_interface(&iface.name, network_status)?;
            if binding == BindingKind::Masquerade && network != "pod" {
                return Err(err("masquerade is only allowed on the pod network".into()));
            }
            let status = network_status
                .iter()
                .find(|s| s.interface.as_deref() == Some(pod_interface.as_str()))
                .cloned();
            out.push(PlannedInterface {
                name: iface.name.clone(),
                index,
                binding,
                network,
                pod_interface,
                mac: iface.mac_address.clone(),
                ports: iface.ports.clone(),
                status,
            });
        }
        Ok(out)
    }

    fn qualify(&self, network_name: &str) -> String {
        if network_name.contains('/') {
            network_name.to_string()
        } else {
            format!("{}/{}", self.namespace, network_name)
        }
    }

    /// (network, pod interface) of the VM interface `name`.
    fn pod_interface(&self, name: &str, status: &[NetworkStatus]) -> Result<(String, String)> {
        let err = |reason: &str| Error::Interface {
            iface: name.to_string(),
            reason: reason.to_string(),
        };
        let net = self
            .spec
            .networks
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| err("no network of that name in spec.networks"))?;
        match (&net.pod, &net.multus) {
            (Some(_), None) => Ok(("pod".into(), "eth0".into())),
            (None, Some(m)) if m.default => Ok((self.qualify(&m.network_name), "eth0".into())),
            (None, Some(m)) => {
                let qualified = self.qualify(&m.network_name);
                if let Some(ifname) = status
                    .iter()
                    .find(|s| s.name == qualified && !s.default)
                    .and_then(|s| s.interface.clone())
                {
                    return Ok((qualified, ifname));
                }
                let position = self
                    .spec
                    .networks
                    .iter()
                    .filter(|n| n.multus.as_ref().is_some_and(|m| !m.default))
                    .position(|n| n.name == name)
                    .ok_or_else(|| err("network not found among multus networks"))?;
                Ok((qualified, format!("net{}", position + 1)))
            }
            _ => Err(err("network must have exactly one of pod, multus")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  namespace: tenant-a
spec:
  running: true
  template:
    metadata:
      labels:
        kubevirt.io/size: small
    spec:
      domain:
        cpu:
          cores: 1
        devices:
          disks:
            - name: containerdisk
              disk:
                bus: virtio
          interfaces:
            - name: default
              masquerade: {}
              ports:
                - name: http
                  port: 80
                - port: 53
                  protocol: UDP
            - name: blue
              bridge: {}
              macAddress: "02:00:00:00:00:b1"
            - name: fast
              sriov: {}
        resources:
          requests:
            memory: 64M
      networks:
        - name: default
          pod: {}
        - name: blue
          multus:
            networkName: blue-net
        - name: fast
          multus:
            networkName: sriov/fast-net
      volumes:
        - name: containerdisk
          containerDisk:
            image: quay.io/kubevirt/cirros-container-disk-demo
"#;

    #[test]
    fn annotations_template_over_vm() {
        let vm = Vm::parse(
            r#"{"metadata":{"name":"a","annotations":{"virtlink.io/masquerade-datapath":"ebpf","x":"1"}},
                "spec":{"template":{"metadata":{"annotations":{"virtlink.io/masquerade-datapath":"nftables"}},
                  "spec":{"domain":{"devices":{"interfaces":[]}}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            vm.annotations.get(DATAPATH_ANNOTATION).map(String::as_str),
            Some("nftables")
        );
        assert_eq!(vm.annotations.get("x").map(String::as_str), Some("1"));
    }

    #[test]
    fn parses_virtual_machine_and_maps_interfaces() {
        let vm = Vm::parse(VM).unwrap();
        assert_eq!(vm.name, "testvm");
        assert_eq!(vm.namespace, "tenant-a");
        let plan = vm.plan(&[]).unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].binding, BindingKind::Masquerade);
        assert_eq!(plan[0].network, "pod");
        assert_eq!(plan[0].pod_interface, "eth0");
        assert_eq!(plan[0].ports.len(), 2);
        assert_eq!(plan[0].ports[1].protocol().unwrap(), Protocol::Udp);
        assert_eq!(plan[0].ports[0].protocol().unwrap(), Protocol::Tcp);
        assert_eq!(plan[1].binding, BindingKind::Bridge);
        assert_eq!(plan[1].network, "tenant-a/blue-net");
        assert_eq!(plan[1].pod_interface, "net1");
        assert_eq!(plan[1].mac.as_deref(), Some("02:00:00:00:00:b1"));
        assert_eq!(plan[2].binding, BindingKind::Sriov);
        assert_eq!(plan[2].network, "sriov/fast-net");
        assert_eq!(plan[2].pod_interface, "net2");
        assert_eq!(plan[2].index, 2);
    }

    #[test]
    fn network_status_names_the_interface() {
        let vm = Vm::parse(VM).unwrap();
        let status = vec![
            NetworkStatus {
                name: "k8s-pod-network".into(),
                interface: Some("eth0".into()),
                default: true,
                ..Default::default()
            },
            NetworkStatus {
                name: "sriov/fast-net".into(),
                interface: Some("sriov0".into()),
                ..Default::default()
            },
        ];
        let plan = vm.plan(&status).unwrap();
        assert_eq!(plan[1].pod_interface, "net1");
        assert_eq!(plan[2].pod_interface, "sriov0");
        assert_eq!(
            plan[2].status.as_ref().map(|s| s.name.as_str()),
            Some("sriov/fast-net")
        );
    }

    #[test]
    fn parses_vmi_json() {
        let vmi = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
          "metadata":{"name":"vmi1"},
          "spec":{"domain":{"devices":{"interfaces":[{"name":"red","bridge":{}}]}},
                  "networks":[{"name":"red","multus":{"networkName":"red","default":true}}]}}"#;
        let vm = Vm::parse(vmi).unwrap();
        assert_eq!(vm.name, "vmi1");
        assert_eq!(vm.namespace, "default");
        let plan = vm.plan(&[]).unwrap();
        assert_eq!(plan[0].pod_interface, "eth0");
        assert_eq!(plan[0].network, "default/red");
    }

    #[test]
    fn rejects_bad_interfaces() {
        let bad = |ifaces: &str, nets: &str| {
            let text = format!(
                r#"{{"spec":{{"domain":{{"devices":{{"interfaces":{ifaces}}}}},"networks":{nets}}}}}"#
            );
            Vm::parse(&text).unwrap().plan(&[]).unwrap_err().to_string()
        };
        assert!(bad(r#"[{"name":"a"}]"#, r#"[{"name":"a","pod":{}}]"#).contains("no binding"));
        assert!(bad(
            r#"[{"name":"a","bridge":{},"masquerade":{}}]"#,
            r#"[{"name":"a","pod":{}}]"#
        )
        .contains("more than one"));
        assert!(bad(r#"[{"name":"a","bridge":{}}]"#, "[]").contains("no network"));
        assert!(bad(
            r#"[{"name":"a","masquerade":{}}]"#,
            r#"[{"name":"a","multus":{"networkName":"x"}}]"#
        )
        .contains("only allowed on the pod network"));
        assert!(bad(
            r#"[{"name":"a","masquerade":{},"ports":[{"port":1,"protocol":"SCTP"}]}]"#,
            r#"[{"name":"a","pod":{}}]"#
        )
        .contains("unknown protocol"));
        assert!(Vm::parse("spec: {}").is_err());
    }
}
