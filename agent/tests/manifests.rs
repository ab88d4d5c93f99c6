//! manifests/: every YAML document parses as the Kubernetes type it claims to
//! be (k8s-openapi types; a round trip through the type must give back the
//! same object, so a misspelt or misplaced field fails), the RBAC grants
//! exactly what the agent uses, the CRD file is `virtlink crd`'s output, and
//! the examples are consistent with each other and with the device plugin's
//! pools. KubeVirt's VirtualMachine has no k8s-openapi type: it is checked
//! field by field. The admission policy's CEL expressions are evaluated
//! with the `cel` crate against admission requests built here (no API
//! server can run on this machine).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Resource;
use netattach::nad::NetworkAttachmentDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every document of every YAML file under manifests/ except the
/// kustomization, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    let mut dirs = vec![manifests()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

/// Parses `v` as `T` and checks nothing was lost on the way back.
fn round_trip<T: DeserializeOwned + Serialize>(file: &Path, v: &Value) -> T {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{}: not a {}: {e}", file.display(), v["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back,
        v,
        "{}: {} {} changes in a round trip through its type (unknown or misplaced field?)",
        file.display(),
        v["kind"],
        v["metadata"]["name"]
    );
    typed
}

#[derive(Default)]
struct Parsed {
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    accounts: Vec<ServiceAccount>,
    daemonsets: Vec<DaemonSet>,
    configmaps: Vec<ConfigMap>,
    nads: Vec<NetworkAttachmentDefinition>,
    crds: Vec<CustomResourceDefinition>,
    policies: Vec<ValidatingAdmissionPolicy>,
    policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    vms: Vec<Value>,
}

fn parse_all() -> Parsed {
    let mut p = Parsed::default();
    let docs = documents();
    assert!(docs.len() >= 10, "found only {} documents", docs.len());
    for (f, v) in &docs {
        let kind = (
            v["apiVersion"].as_str().unwrap_or_default(),
            v["kind"].as_str().unwrap_or_default(),
        );
        match kind {
            ("v1", "Namespace") => {
                round_trip::<Namespace>(f, v);
            }
            ("v1", "ServiceAccount") => p.accounts.push(round_trip(f, v)),
            ("v1", "ConfigMap") => p.configmaps.push(round_trip(f, v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => p.roles.push(round_trip(f, v)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                p.bindings.push(round_trip(f, v))
            }
            ("apps/v1", "DaemonSet") => p.daemonsets.push(round_trip(f, v)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                p.crds.push(round_trip(f, v))
            }
            ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition") => p.nads.push(round_trip(f, v)),
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                p.policies.push(round_trip(f, v))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                p.policy_bindings.push(round_trip(f, v))
            }
            ("kubevirt.io/v1", "VirtualMachine") => p.vms.push(v.clone()),
            other => panic!("{}: unexpected object {other:?}", f.display()),
        }
    }
    p
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    let p = parse_all();
    assert_eq!(p.roles.len(), 1);
    let mut granted = BTreeMap::new();
    for rule in p.roles[0].rules.clone().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.clone().unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                let verbs: &mut BTreeSet<String> = granted.entry((g.clone(), r)).or_default();
                verbs.extend(rule.verbs.iter().cloned());
            }
        }
    }
    let used: BTreeMap<(String, String), BTreeSet<String>> = virtlink_agent::cache::API_ACCESS
        .iter()
        .map(|(g, r, v)| {
            (
                (g.to_string(), r.to_string()),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(granted, used);
    assert!(granted.values().flatten().all(|v| v != "*"));

    // The binding ties that role to the DaemonSet's service account.
    let ds = &p.daemonsets[0];
    let spec = ds.spec.template.spec.as_ref().unwrap();
    let sa = spec.service_account_name.clone().unwrap();
    let ns = ds.metadata.namespace.clone().unwrap();
    assert!(p
        .accounts
        .iter()
        .any(|a| a.metadata.name.as_deref() == Some(&sa)
            && a.metadata.namespace.as_deref() == Some(&ns)));
    let b = &p.bindings[0];
    assert_eq!(b.role_ref.name, p.roles[0].metadata.name.clone().unwrap());
    let subj = &b.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (subj.kind.as_str(), subj.name.as_str()),
        ("ServiceAccount", sa.as_str())
    );
    assert_eq!(subj.namespace.as_deref(), Some(ns.as_str()));
}

/// What the API server decides for one request under `policy`, evaluated
/// the way it does: every match condition must hold, then the variables are
/// computed in order, then the first failing validation denies with its
/// message. `Ok(false)`: the policy does not apply.
fn admit(
    policy: &ValidatingAdmissionPolicy,
    request: &Value,
    object: &Value,
    old: &Value,
) -> Result<bool, String> {
    use cel::{Context, Program, Value as Cel};
    let spec = policy.spec.as_ref().unwrap();
    let mut ctx = Context::default();
    ctx.add_variable("request", request.clone()).unwrap();
    ctx.add_variable("object", object.clone()).unwrap();
    ctx.add_variable("oldObject", old.clone()).unwrap();
    let eval = |ctx: &Context, e: &str| -> Cel {
        Program::compile(e)
            .unwrap_or_else(|err| panic!("{e}: {err}"))
            .execute(ctx)
            .unwrap_or_else(|err| panic!("{e}: {err}"))
    };
    for c in spec.match_conditions.clone().unwrap_or_default() {
        if eval(&ctx, &c.expression) != Cel::Bool(true) {
            return Ok(false);
        }
    }
    let mut vars: std::collections::HashMap<String, Cel> = Default::default();
    for v in spec.variables.clone().unwrap_or_default() {
        let value = eval(&ctx, &v.expression);
        vars.insert(v.name, value);
        ctx.add_variable_from_value("variables", vars.clone());
    }
    for v in spec.validations.clone().unwrap_or_default() {
        match eval(&ctx, &v.expression) {
            Cel::Bool(true) => {}
            Cel::Bool(false) => {
                return Err(match &v.message_expression {
                    Some(e) => match eval(&ctx, e) {
                        Cel::String(s) => s.to_string(),
                        other => panic!("{e}: not a string: {other:?}"),
                    },
                    None => v.message.clone().unwrap_or_default(),
                });
            }
            other => panic!("{}: not a bool: {other:?}", v.expression),
        }
    }
    Ok(true)
}

#[test]
fn admission_policy_lets_an_agent_write_only_its_own_nodes_slices() {
    let p = parse_all();
    assert_eq!(p.policies.len(), 1);
    let policy = &p.policies[0];
    let name = policy.metadata.name.clone().unwrap();
    let binding = &p.policy_bindings[0];
    let bspec = &binding.spec;
    assert_eq!(bspec.policy_name, name);
    assert_eq!(bspec.validation_actions, vec!["Deny".to_string()]);
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let rules = spec
        .match_constraints
        .as_ref()
        .unwrap()
        .resource_rules
        .clone()
        .unwrap();
    assert_eq!(
        rules[0].resources,
        Some(vec![
            virtlink_vnet::model::NetworkEndpointSlice::plural(&()).to_string()
        ])
    );
    assert_eq!(
        rules[0].api_groups,
        Some(vec![
            virtlink_vnet::model::NetworkEndpointSlice::group(&()).to_string()
        ])
    );

    // The agent's user name, from the DaemonSet's service account.
    let ds = &p.daemonsets[0];
    let sa = ds.spec.template.spec.as_ref().unwrap();
    let agent = format!(
        "system:serviceaccount:{}:{}",
        ds.metadata.namespace.as_deref().unwrap(),
        sa.service_account_name.as_deref().unwrap()
    );
    let request = |user: &str, op: &str, node: Option<&str>| {
        let mut r = serde_json::json!({"operation": op, "userInfo": {"username": user}});
        if let Some(n) = node {
            r["userInfo"]["extra"] =
                serde_json::json!({"authentication.kubernetes.io/node-name": [n]});
        }
        r
    };
    let slice = |node: &str, label: &str| {
        serde_json::json!({
            "apiVersion": "virtlink.io/v1alpha1", "kind": "NetworkEndpointSlice",
            "metadata": {"name": format!("blue.{node}"),
                         "labels": {"virtlink.io/network": "blue", "virtlink.io/node": label}},
            "spec": {"network": "blue", "node": node, "nodeIp": "192.168.0.1", "endpoints": []}
        })
    };
    let none = Value::Null;
    let (a, b) = (slice("node-a", "node-a"), slice("node-b", "node-b"));

    // Its own node's slice: create, update, delete.
    assert_eq!(
        admit(
            policy,
            &request(&agent, "CREATE", Some("node-a")),
            &a,
            &none
        ),
        Ok(true)
    );
    assert_eq!(
        admit(policy, &request(&agent, "UPDATE", Some("node-a")), &a, &a),
        Ok(true)
    );
    assert_eq!(
        admit(
            policy,
            &request(&agent, "DELETE", Some("node-a")),
            &none,
            &a
        ),
        Ok(true)
    );
    // Another node's: refused, saying whose.
    let denied = admit(
        policy,
        &request(&agent, "CREATE", Some("node-a")),
        &b,
        &none,
    );
    assert!(
        denied
            .as_ref()
            .is_err_and(|m| m.contains("node node-a") && m.contains("node-b")),
        "{denied:?}"
    );
    assert!(admit(policy, &request(&agent, "UPDATE", Some("node-a")), &b, &b).is_err());
    assert!(admit(
        policy,
        &request(&agent, "DELETE", Some("node-a")),
        &none,
        &b
    )
    .is_err());
    // Taking over another node's slice, or giving its own away.
    assert!(admit(policy, &request(&agent, "UPDATE", Some("node-a")), &a, &b).is_err());
    assert!(admit(policy, &request(&agent, "UPDATE", Some("node-a")), &b, &a).is_err());
    // Its own node in spec but another's label (what other agents select on).
    let mislabelled = slice("node-a", "node-b");
    assert!(admit(
        policy,
        &request(&agent, "CREATE", Some("node-a")),
        &mislabelled,
        &none
    )
    .is_err());
    // A token without the node's name (a cluster older than 1.30).
    let old = admit(policy, &request(&agent, "CREATE", None), &a, &none);
    assert!(
        old.as_ref().is_err_and(|m| m.contains("no node name")),
        "{old:?}"
    );
    // Anyone else (an administrator) is not this policy's business.
    assert_eq!(
        admit(
            policy,
            &request("kubernetes-admin", "CREATE", None),
            &b,
            &none
        ),
        Ok(false)
    );
}

#[test]
fn daemonset_mounts_and_privileges() {
    let p = parse_all();
    assert_eq!(p.daemonsets.len(), 1);
    let spec = p.daemonsets[0].spec.template.spec.clone().unwrap();
    assert_eq!(spec.host_network, Some(true));
    let host_paths: BTreeSet<String> = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.host_path.map(|h| h.path))
        .collect();
    for path in [
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/lib/kubelet/device-plugins",
        "/sys/fs/bpf",
        "/run/netns",
        "/run/virtlink",
    ] {
        assert!(
            host_paths.contains(path),
            "no hostPath {path}: {host_paths:?}"
        );
    }
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["agent", "device-plugin"]);
    let agent = &spec.containers[0];
    let cmd = agent.command.clone().unwrap().join(" ");
    assert!(
        cmd.starts_with("virtlink agent") && cmd.contains("--kube") && cmd.contains("--install")
    );
    assert!(agent.readiness_probe.is_some() && agent.liveness_probe.is_some());
    // The device plugin gets no privileges at all.
    let dp = spec.containers[1].security_context.clone().unwrap();
    assert_eq!(dp.privileged, None);
    assert_eq!(dp.allow_privilege_escalation, Some(false));
    assert_eq!(dp.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
}

#[test]
fn crd_file_is_generated_from_the_rust_types() {
    let file = manifests().join("base/crd-network-attachment-definitions.yaml");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        virtlink_agent::crds::yaml().unwrap(),
        "regenerate with `virtlink crd > {}`",
        file.display()
    );
    let p = parse_all();
    // The isolated networks' CRDs are vnet's (checked in vnet/tests/manifests.rs).
    let nad: Vec<_> = p
        .crds
        .iter()
        .filter(|c| c.spec.group != "virtlink.io")
        .collect();
    assert_eq!(nad.len(), 1);
    assert_eq!(
        nad[0].spec.names.short_names,
        Some(vec!["net-attach-def".to_string()])
    );
}

#[test]
fn kustomization_lists_every_base_file() {
    let k: Value = serde_yaml::from_str(
        &std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(manifests().join("base"))
        .unwrap()
        .flatten()
        .map(|e| format!("base/{}", e.file_name().to_string_lossy()))
        .collect();
    assert_eq!(listed, files);
}

#[test]
fn example_vm_uses_the_example_nads_and_device_pools() {
    let p = parse_all();
    assert_eq!(p.vms.len(), 1);
    let vm = &p.vms[0]["spec"]["template"]["spec"];
    let interfaces = vm["domain"]["devices"]["interfaces"].as_array().unwrap();
    let networks = vm["networks"].as_array().unwrap();
    let mut bindings = Vec::new();
    for i in interfaces {
        let name = i["name"].as_str().unwrap();
        let binding: Vec<&str> = ["masquerade", "bridge", "sriov", "binding"]
            .into_iter()
            .filter(|b| i.get(*b).is_some())
            .collect();
        assert_eq!(
            binding.len(),
            1,
            "interface {name}: one binding: {binding:?}"
        );
        let net = networks
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("interface {name} has no network"));
        bindings.push((binding[0], net.clone()));
    }
    let kinds: Vec<&str> = bindings.iter().map(|b| b.0).collect();
    assert_eq!(kinds, ["masquerade", "bridge", "sriov"]);
    assert!(
        bindings[0].1.get("pod").is_some(),
        "masquerade on the pod network"
    );

    // Each multus network is an example NAD; the SR-IOV one names a pool of
    // the device plugin's ConfigMap, which the device plugin accepts.
    let cm = &p.configmaps[0];
    let dp = virtlink_device_plugin::config::Config::parse(
        &cm.data.as_ref().unwrap()["device-plugin.yaml"],
    )
    .unwrap();
    let pools: Vec<String> = dp.pools.iter().map(|p| p.full_name()).collect();
    for (kind, net) in &bindings[1..] {
        let nad_name = net["multus"]["networkName"].as_str().unwrap();
        let nad = p
            .nads
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(nad_name))
            .unwrap_or_else(|| panic!("no example NAD {nad_name}"));
        let config: Value = serde_json::from_str(nad.spec.config.as_deref().unwrap()).unwrap();
        assert_eq!(config["cniVersion"], "1.0.0");
        let resource = nad
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(netattach::RESOURCE_NAME_ANNOTATION));
        if *kind == "sriov" {
            let r = resource.expect("the SR-IOV NAD names a device pool");
            assert!(pools.contains(r), "{r} not in {pools:?}");
        } else {
            assert!(resource.is_none());
        }
    }
}

#[test]
fn binding_plugin_nads_are_configs_the_binding_plugin_accepts() {
    let p = parse_all();
    let bindings: Vec<_> = p
        .nads
        .iter()
        .filter(|n| {
            n.spec
                .config
                .as_deref()
                .is_some_and(|c| virtlink_cni::binding::is_binding_conf(c.as_bytes()))
        })
        .collect();
    let names: Vec<&str> = bindings
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["virtlink-masquerade", "virtlink-bridge"]);
    for nad in bindings {
        let config = nad.spec.config.as_deref().unwrap();
        let c = virtlink_cni::binding::BindingConf::parse(config.as_bytes())
            .unwrap_or_else(|e| panic!("{:?}: {e}", nad.metadata.name));
        assert_eq!(c.kind, virtlink_agent::install::SHIM_NAME);
        assert_eq!(c.tap_owner, Some(107), "virt-launcher's qemu user");
        assert_eq!(nad.metadata.namespace.as_deref(), Some("virtlink-system"));
    }
}
