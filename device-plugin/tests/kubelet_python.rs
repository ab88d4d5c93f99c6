//! The real `virtlink-device-plugin` binary against a kubelet stand-in written
//! with a different gRPC implementation (Python grpcio, stubs generated at test
//! time by grpcio-tools from the vendored proto): Register, ListAndWatch,
//! Allocate, GetPreferredAllocation, PreStartContainer, and re-registration
//! when "kubelet" restarts.
//!
//! No kubelet exists on this machine (nor any Kubernetes node), and no SR-IOV
//! or VFIO hardware: kubelet is played by tests/kubelet_standin.py over unix
//! sockets in a temp dir, and devices live in a sysfs tree built in a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use common::{wait_for, Env};
use serde_json::Value;
use virtlink_device_plugin::fakesys::VfSpec;

const CONFIG: &str = r#"
resourceList:
  - resourceName: sriov_net
    selectors:
      vendors: ["8086"]
      pfNames: ["ens1f0", "ens2f0"]
  - resourceName: dpdk
    deviceType: vfio
    selectors: [{drivers: ["vfio-pci"]}]
  - resourceName: vlan100
    deviceType: vlan
    vlan: {master: br-vlan, id: 100, capacity: 2}
  - resourceName: empty
    selectors: {pfNames: ["ens9f9"]}
"#;

const NET: &str = "virtlink.io/sriov_net";
const DPDK: &str = "virtlink.io/dpdk";
const VLAN: &str = "virtlink.io/vlan100";
const EMPTY: &str = "virtlink.io/empty";

/// Two PFs on two NUMA nodes: four kernel VFs on ens1f0, two kernel and two
/// vfio-bound VFs on ens2f0, and a VLAN master.
fn two_pfs(env: &Env) {
    let s = &env.sys;
    s.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
    s.add_pf("0000:81:00.0", "ens2f0", 1).unwrap();
    for i in 0..4u32 {
        s.add_vf(
            "0000:03:00.0",
            i,
            &VfSpec::netdev(&format!("0000:03:02.{i}"), &format!("ens1f0v{i}")),
        )
        .unwrap();
    }
    for i in 0..2u32 {
        s.add_vf(
            "0000:81:00.0",
            i,
            &VfSpec::netdev(&format!("0000:81:02.{i}"), &format!("ens2f0v{i}")),
        )
        .unwrap();
    }
    s.add_vf("0000:81:00.0", 2, &VfSpec::vfio("0000:81:02.2", 60))
        .unwrap();
    s.add_vf("0000:81:00.0", 3, &VfSpec::vfio("0000:81:02.3", 61))
        .unwrap();
    s.add_virtual_netdev("br-vlan").unwrap();
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn register_list_allocate_and_reregister_after_kubelet_restart() {
    let env = Env::new("");
    env.write_config(CONFIG);
    two_pfs(&env);
    let mut kubelet = env.start_kubelet();
    let _plugin = env.start_plugin();

    // Every pool registers once, with the v1beta1 version and its own socket.
    let regs = wait_for("4 registrations", || {
        let r = kubelet.registrations();
        (r.len() == 4).then_some(r)
    });
    for r in &regs {
        assert_eq!(r["version"], "v1beta1");
        assert_eq!(r["preferred"], true);
        let ep = r["endpoint"].as_str().unwrap();
        assert!(env.kubelet_dir.join(ep).exists(), "socket {ep} missing");
    }
    let mut names: Vec<&str> = regs
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [DPDK, EMPTY, NET, VLAN]);

    let net = wait_for("sriov_net list", || {
        let d = kubelet.device_health(NET);
        (d.len() == 6).then_some(d)
    });
    let ids: Vec<&str> = net.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "0000:03:02.0",
            "0000:03:02.1",
            "0000:03:02.2",
            "0000:03:02.3",
            "0000:81:02.0",
            "0000:81:02.1"
        ],
        "kernel VFs of both PFs, no vfio VF, no PF"
    );
    assert!(net.iter().all(|(_, h)| h == "Healthy"));
    let view = kubelet.devices(NET);
    assert_eq!(view["options"]["get_preferred_allocation_available"], true);
    let numa: Vec<Value> = view["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["numa"].clone())
        .collect();
    assert_eq!(numa[0], serde_json::json!([0]));
    assert_eq!(numa[5], serde_json::json!([1]));
    assert_eq!(
        wait_for("dpdk list", || {
            let d = kubelet.device_ids(DPDK);
            (d.len() == 2).then_some(d)
        }),
        ["0000:81:02.2", "0000:81:02.3"]
    );
    assert_eq!(
        wait_for("vlan list", || {
            let d = kubelet.device_ids(VLAN);
            (d.len() == 2).then_some(d)
        }),
        ["vlan100-br-vlan-0", "vlan100-br-vlan-1"]
    );
    // A pool that matches nothing is advertised, with no devices.
    let empty = wait_for("empty pool list", || {
        let v = kubelet.devices(EMPTY);
        (v["updates"].as_u64() >= Some(1)).then_some(v)
    });
    assert_eq!(empty["devices"], serde_json::json!([]));

    // Preferred allocation before anything is held: one PF and NUMA node
    // when the request fits (the smallest group that fits), must-include first.
    let all = strs(&ids);
    assert_eq!(
        kubelet.preferred(NET, &all, &[], 2),
        ["0000:81:02.0", "0000:81:02.1"]
    );
    assert_eq!(
        kubelet.preferred(NET, &all, &[], 3),
        ["0000:03:02.0", "0000:03:02.1", "0000:03:02.2"]
    );
    assert_eq!(
        kubelet.preferred(NET, &all, &["0000:81:02.1"], 3),
        ["0000:81:02.1", "0000:81:02.0", "0000:03:02.0"]
    );
    assert_eq!(
        kubelet.preferred(NET, &all, &["0000:03:02.3"], 2),
        ["0000:03:02.3", "0000:03:02.0"]
    );

    // Allocate a kernel VF: PCIDEVICE_ variable and an NPWG device-info file.
    let r = kubelet.allocate(NET, &[&["0000:03:02.1"]]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["responses"][0]["envs"]["PCIDEVICE_VIRTLINK_IO_SRIOV_NET"],
        "0000:03:02.1"
    );
    assert_eq!(r["responses"][0]["devices"], serde_json::json!([]));
    let info = read_json(
        &env.devinfo_dir
            .join("virtlink.io-sriov_net-0000:03:02.1-device.json"),
    );
    assert_eq!(
        info,
        serde_json::json!({"type": "pci", "version": "1.1.0",
            "pci": {"pci-address": "0000:03:02.1", "pf-pci-address": "0000:03:00.0"}})
    );
    // Two containers in one request.
    let r = kubelet.allocate(NET, &[&["0000:81:02.0"], &["0000:03:02.3", "0000:03:02.2"]]);
    assert_eq!(
        r["responses"][1]["envs"]["PCIDEVICE_VIRTLINK_IO_SRIOV_NET"],
        "0000:03:02.3,0000:03:02.2"
    );

    // vfio: the container gets /dev/vfio/vfio and each IOMMU group's node.
    let r = kubelet.allocate(DPDK, &[&["0000:81:02.2", "0000:81:02.3"]]);
    assert_eq!(r["ok"], true, "{r}");
    let paths: Vec<&str> = r["responses"][0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["host_path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/dev/vfio/vfio", "/dev/vfio/60", "/dev/vfio/61"]);
    assert_eq!(r["responses"][0]["devices"][0]["permissions"], "rw");
    assert_eq!(
        r["responses"][0]["envs"]["PCIDEVICE_VIRTLINK_IO_DPDK"],
        "0000:81:02.2,0000:81:02.3"
    );
    assert!(env
        .devinfo_dir
        .join("virtlink.io-dpdk-0000:81:02.3-device.json")
        .exists());

    // VLAN: the id and master as variables and a "vlan" device-info file.
    let r = kubelet.allocate(VLAN, &[&["vlan100-br-vlan-1"]]);
    assert_eq!(r["responses"][0]["envs"]["VLAN_VIRTLINK_IO_VLAN100"], "100");
    assert_eq!(
        r["responses"][0]["envs"]["VLAN_MASTER_VIRTLINK_IO_VLAN100"],
        "br-vlan"
    );
    let info = read_json(
        &env.devinfo_dir
            .join("virtlink.io-vlan100-vlan100-br-vlan-1-device.json"),
    );
    assert_eq!(
        info,
        serde_json::json!({"type": "vlan", "version": "1.1.0", "vlan": {"id": 100, "master": "br-vlan"}})
    );

    // Preferred allocation, held devices avoided. Held now: 03:02.1,
    // 03:02.2, 03:02.3, 81:02.0; free: 03:02.0, 81:02.1.
    let mut got = kubelet.preferred(NET, &all, &[], 2);
    got.sort();
    assert_eq!(got, ["0000:03:02.0", "0000:81:02.1"]);
    let got = kubelet.preferred(NET, &all, &["0000:03:02.3"], 2);
    assert_eq!(
        got,
        ["0000:03:02.3", "0000:03:02.0"],
        "must-include first, then a free device on its PF"
    );
    assert_eq!(
        kubelet
            .call(serde_json::json!({"cmd": "prestart", "resource": NET, "ids": ["0000:03:02.0"]}))
            ["ok"],
        true
    );

    // kubelet restarts: it deletes every socket and serves a new kubelet.sock.
    // Each pool re-creates its socket and registers again.
    kubelet.restart();
    let regs = wait_for("re-registration of every pool", || {
        let r = kubelet.registrations();
        let second: Vec<Value> = r.into_iter().filter(|r| r["generation"] == 2).collect();
        (second.len() == 4).then_some(second)
    });
    for r in &regs {
        let ep = r["endpoint"].as_str().unwrap();
        assert!(
            env.kubelet_dir.join(ep).exists(),
            "socket {ep} not re-created"
        );
    }
    let again = wait_for("list after re-registration", || {
        let d = kubelet.device_ids(NET);
        (d.len() == 6).then_some(d)
    });
    assert_eq!(again, all);
    let r = kubelet.allocate(NET, &[&["0000:03:02.0"]]);
    assert_eq!(r["ok"], true, "Allocate after re-registration: {r}");
}

#[test]
fn devices_and_config_changes_are_picked_up_while_running() {
    let env = Env::new(
        r#"{"resourceList": [{"resourceName": "a", "selectors": {"pfNames": ["ens1f0"]}}]}"#,
    );
    let s = &env.sys;
    s.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
    s.add_pf("0000:81:00.0", "ens2f0", 1).unwrap();
    s.add_vf("0000:03:00.0", 0, &VfSpec::netdev("0000:03:02.0", "v0"))
        .unwrap();
    s.add_vf("0000:03:00.0", 1, &VfSpec::netdev("0000:03:02.1", "v1"))
        .unwrap();
    let mut kubelet = env.start_kubelet();
    let plugin = env.start_plugin();
    let a = "virtlink.io/a";
    let ids = |k: &mut common::Kubelet, want: &[&str]| {
        let want = strs(want);
        wait_for(&format!("list {want:?}"), || {
            (k.device_ids(a) == want).then_some(())
        });
    };
    ids(&mut kubelet, &["0000:03:02.0", "0000:03:02.1"]);

    // A VF appears, another goes away.
    s.add_vf("0000:03:00.0", 2, &VfSpec::netdev("0000:03:02.2", "v2"))
        .unwrap();
    ids(
        &mut kubelet,
        &["0000:03:02.0", "0000:03:02.1", "0000:03:02.2"],
    );
    s.remove_vf("0000:03:00.0", 0).unwrap();
    ids(&mut kubelet, &["0000:03:02.1", "0000:03:02.2"]);

    // The PF link goes down: its VFs turn Unhealthy, then Healthy again.
    s.set_operstate("ens1f0", "down").unwrap();
    wait_for("Unhealthy", || {
        let h = kubelet.device_health(a);
        (h.len() == 2 && h.iter().all(|(_, h)| h == "Unhealthy")).then_some(())
    });
    s.set_operstate("ens1f0", "up").unwrap();
    wait_for("Healthy again", || {
        let h = kubelet.device_health(a);
        (h.len() == 2 && h.iter().all(|(_, h)| h == "Healthy")).then_some(())
    });

    // Config change: a narrower selector for a, and a new vfio pool.
    s.add_vf("0000:81:00.0", 0, &VfSpec::vfio("0000:81:02.0", 70))
        .unwrap();
    env.write_config(
        r#"{"resourceList": [
            {"resourceName": "a", "selectors": {"pfNames": ["ens1f0#2"]}},
            {"resourceName": "dpdk", "deviceType": "vfio", "selectors": {"rootDevices": ["0000:81:00.0"]}}]}"#,
    );
    ids(&mut kubelet, &["0000:03:02.2"]);
    wait_for("dpdk registered with its device", || {
        (kubelet.device_ids("virtlink.io/dpdk") == ["0000:81:02.0"]).then_some(())
    });
    assert_eq!(kubelet.registrations_of(a), 1, "a kept its registration");

    // An invalid config is refused; the running pools are kept.
    env.write_config(r#"{"resourceList": [{"resourceName": "a", "deviceType": "nic"}]}"#);
    wait_for("config error logged", || {
        plugin
            .log_text()
            .contains("resourceList[0].deviceType")
            .then_some(())
    });
    assert_eq!(kubelet.device_ids(a), ["0000:03:02.2"]);
    assert_eq!(kubelet.device_ids("virtlink.io/dpdk"), ["0000:81:02.0"]);

    // A pool dropped from the config stops serving: its socket goes away.
    env.write_config(
        r#"{"resourceList": [{"resourceName": "a", "selectors": {"pfNames": ["ens1f0#2"]}}]}"#,
    );
    let dpdk_sock = env.kubelet_dir.join("virtlink-virtlink.io_dpdk.sock");
    wait_for("dpdk socket removed", || {
        (!dpdk_sock.exists()).then_some(())
    });
    wait_for("dpdk stream ended", || {
        (kubelet.devices("virtlink.io/dpdk")["ended"] == true).then_some(())
    });
    assert_eq!(kubelet.device_ids(a), ["0000:03:02.2"]);
}

#[test]
fn bad_requests_get_grpc_errors() {
    let env = Env::new(CONFIG);
    two_pfs(&env);
    let mut kubelet = env.start_kubelet();
    let _plugin = env.start_plugin();
    wait_for("lists", || {
        (kubelet.device_ids(NET).len() == 6).then_some(())
    });

    let r = kubelet.allocate(NET, &[&["0000:99:00.0"]]);
    assert_eq!(r["ok"], false);
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    assert!(r["details"].as_str().unwrap().contains("0000:99:00.0"));
    // A device of another pool is not this pool's.
    let r = kubelet.allocate(NET, &[&["0000:81:02.2"]]);
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    let r = kubelet.allocate(VLAN, &[&["vlan100-br-vlan-7"]]);
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    let r = kubelet.allocate(NET, &[]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    let r = kubelet.allocate(NET, &[&[]]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    let r = kubelet.allocate(NET, &[&["0000:03:02.0", "0000:03:02.0"]]);
    assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
    // One bad container fails the whole request before anything is written.
    let r = kubelet.allocate(NET, &[&["0000:03:02.0"], &["0000:99:00.0"]]);
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    // Nothing was written for the failed requests.
    assert!(!env
        .devinfo_dir
        .join("virtlink.io-sriov_net-0000:03:02.0-device.json")
        .exists());
    let r = kubelet.allocate(EMPTY, &[&["0000:03:02.0"]]);
    assert_eq!(
        r["code"], "NOT_FOUND",
        "the empty pool has nothing to allocate: {r}"
    );
}

#[test]
fn held_devices_are_remembered_across_a_plugin_restart() {
    let env = Env::new(
        r#"{"resourceList": [{"resourceName": "a", "selectors": {"pfNames": ["ens1f0"]}}]}"#,
    );
    let s = &env.sys;
    s.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
    for i in 0..3u32 {
        s.add_vf(
            "0000:03:00.0",
            i,
            &VfSpec::netdev(&format!("0000:03:02.{i}"), &format!("v{i}")),
        )
        .unwrap();
    }
    let a = "virtlink.io/a";
    let all = strs(&["0000:03:02.0", "0000:03:02.1", "0000:03:02.2"]);
    let mut kubelet = env.start_kubelet();
    let mut plugin = env.start_plugin();
    wait_for("list", || (kubelet.device_ids(a) == all).then_some(()));
    assert_eq!(kubelet.allocate(a, &[&["0000:03:02.0"]])["ok"], true);
    let held_file = env
        .devinfo_dir
        .join("virtlink.io-a-0000:03:02.0-device.json");
    assert!(held_file.exists());
    // A leftover file for a device no pod holds.
    let stale_file = env
        .devinfo_dir
        .join("virtlink.io-a-0000:03:02.1-device.json");
    std::fs::write(&stale_file, "{}").unwrap();

    let st = plugin.terminate();
    assert!(st.success(), "plugin exit status on SIGTERM: {st}");
    assert!(
        !env.kubelet_dir.join("virtlink-virtlink.io_a.sock").exists(),
        "socket removed on exit"
    );
    drop(plugin);

    let _plugin = env.start_plugin();
    wait_for("re-registration after plugin restart", || {
        (kubelet.registrations_of(a) == 2).then_some(())
    });
    wait_for("list after plugin restart", || {
        (kubelet.device_ids(a) == all).then_some(())
    });
    assert!(held_file.exists(), "device-info of a held device is kept");
    assert!(!stale_file.exists(), "stale device-info is cleaned");
    // The held device is offered last.
    assert_eq!(
        kubelet.preferred(a, &all, &[], 2),
        ["0000:03:02.1", "0000:03:02.2"]
    );

    // kubelet's checkpoint, written after our allocation, is the truth about
    // what pods hold: 03:02.0 was released, 03:02.2 is held by a pod.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        env.kubelet_dir.join("kubelet_internal_checkpoint"),
        r#"{"Data":{"PodDeviceEntries":[{"PodUID":"p1","ContainerName":"compute","ResourceName":"virtlink.io/a","DeviceIDs":{"0":["0000:03:02.2"]},"AllocResp":""}],"RegisteredDevices":{"virtlink.io/a":["0000:03:02.0","0000:03:02.1","0000:03:02.2"]}},"Checksum":0}"#,
    )
    .unwrap();
    assert_eq!(
        kubelet.preferred(a, &all, &[], 2),
        ["0000:03:02.0", "0000:03:02.1"]
    );
}
