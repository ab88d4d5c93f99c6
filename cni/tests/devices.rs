//! Networks backed by a device plugin resource: a NAD with
//! `k8s.v1.cni.cncf.io/resourceName` gets the device kubelet allocated to the
//! pod (from kubelet's device checkpoint), handed to the delegate as
//! `deviceID`, and its NPWG device-info is reported in network-status.
//!
//! No kubelet and no SR-IOV hardware exist on this machine: the test writes
//! the checkpoint and the device-info file exactly as kubelet and
//! virtlink-device-plugin write them. The delegate is the real `bridge`
//! plugin behind a wrapper that records the config it was given.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use common::{Netns, Node};
use serde_json::{json, Value};

const UID: &str = "0c7e1f7a-5b2d-4c3e-9f10-aa11bb22cc33";

fn setup(node: &Node) -> std::path::PathBuf {
    // A delegate that records its stdin, then behaves as the bridge plugin.
    let rec = node.dir.path().join("recorded.json");
    let script = node.bin().join("devbridge");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nin=$(cat)\n[ \"$CNI_COMMAND\" = ADD ] && printf '%s' \"$in\" > {}\nprintf '%s' \"$in\" | exec /usr/lib/cni/bridge\n", rec.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    node.manifest(
        "nad-sriov.yaml",
        &format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: sriov-a\n  namespace: default\n  annotations:\n    k8s.v1.cni.cncf.io/resourceName: virtlink.io/sriov_a\nspec:\n  config: '{}'\n",
            json!({"cniVersion": "1.0.0", "name": "sriov-a", "type": "devbridge", "bridge": "cni-sriov",
                   "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": node.ipam()}})
        ),
    );
    node.manifest(
        "pod-vm.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: vm\n  namespace: default\n  uid: {UID}\n  annotations:\n    k8s.v1.cni.cncf.io/networks: sriov-a\n"),
    );
    rec
}

fn conf(node: &Node) -> Value {
    let mut c = node.conf("1.0.0");
    c["kubeletCheckpoint"] = json!(node.dir.path().join("kubelet_internal_checkpoint"));
    c["deviceInfoDir"] = json!(node.dir.path().join("devinfo"));
    c
}

#[test]
fn the_allocated_device_reaches_the_delegate_and_network_status() {
    let node = Node::new();
    let recorded = setup(&node);
    std::fs::write(
        node.dir.path().join("kubelet_internal_checkpoint"),
        json!({"Data": {"PodDeviceEntries": [
            {"PodUID": "someone-else", "ContainerName": "compute", "ResourceName": "virtlink.io/sriov_a",
             "DeviceIDs": {"0": ["0000:03:00.3"]}, "AllocResp": "e30="},
            {"PodUID": UID, "ContainerName": "compute", "ResourceName": "virtlink.io/sriov_a",
             "DeviceIDs": {"0": ["0000:03:00.2"]}, "AllocResp": "e30="}],
            "RegisteredDevices": {"virtlink.io/sriov_a": ["0000:03:00.2", "0000:03:00.3"]}}, "Checksum": 1})
        .to_string(),
    )
    .unwrap();
    let devinfo = node.dir.path().join("devinfo");
    std::fs::create_dir_all(&devinfo).unwrap();
    std::fs::write(
        devinfo.join("virtlink.io-sriov_a-0000:03:00.2-device.json"),
        r#"{"type":"pci","version":"1.1.0","pci":{"pci-address":"0000:03:00.2","pf-pci-address":"0000:03:00.0"}}"#,
    )
    .unwrap();

    let pod = Netns::new("vlpa");
    let args =
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm;K8S_POD_UID={UID}");
    node.call_env(
        "ADD",
        &pod.path(),
        "ctr-vm",
        "vm",
        &conf(&node),
        &[("CNI_ARGS", &args)],
    )
    .expect_ok("ADD with a device-backed network");

    let stdin: Value = serde_json::from_slice(&std::fs::read(&recorded).unwrap()).unwrap();
    assert_eq!(
        stdin["deviceID"], "0000:03:00.2",
        "the pod's own device, not another pod's"
    );
    let status: Value = serde_json::from_slice(
        &std::fs::read(node.state().join("status/default/vm.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(status[1]["name"], "default/sriov-a");
    assert_eq!(status[1]["device-info"]["type"], "pci");
    assert_eq!(
        status[1]["device-info"]["pci"]["pci-address"],
        "0000:03:00.2"
    );

    node.call("DEL", Some(&pod), "ctr-vm", "vm", &conf(&node))
        .expect_ok("DEL");
    common::assert_clean(&node, &pod);
}

#[test]
fn a_pod_without_the_device_gets_a_clear_error_and_nothing_else() {
    let node = Node::new();
    setup(&node);
    // kubelet allocated nothing to this pod (no checkpoint at all).
    let pod = Netns::new("vlpa");
    let args =
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=vm;K8S_POD_UID={UID}");
    let msg = node
        .call_env(
            "ADD",
            &pod.path(),
            "ctr-vm",
            "vm",
            &conf(&node),
            &[("CNI_ARGS", &args)],
        )
        .expect_err(7, "no device allocated");
    assert!(
        msg.contains("virtlink.io/sriov_a") && msg.contains("default/sriov-a"),
        "{msg}"
    );
    common::assert_clean(&node, &pod);
}
