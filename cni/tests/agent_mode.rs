//! Daemon mode: what only exists when virtlink-cni is a shim in front of
//! `virtlink agent`. (The shared scenarios of multi_network.rs, failures.rs and
//! containerd.rs run in both modes.) Real namespaces, the reference plugins,
//! a real agent process that the tests kill with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{assert_clean, Mode, Netns, Node};
use serde_json::json;

/// A delegate `slow-bridge` that announces itself in `marker` and sleeps
/// before doing the bridge plugin's ADD, so a test can act mid-ADD.
fn slow_nad(node: &Node, marker: &Path) {
    let script = node.bin().join("slow-bridge");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then touch {m}; sleep 3; fi\nexec /usr/lib/cni/bridge\n",
            m = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    node.nad(
        "slow",
        json!({"cniVersion": "1.0.0", "name": "slow", "type": "slow-bridge", "bridge": "cni-slow",
               "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": node.ipam()}}),
    );
}

#[test]
fn socket_is_root_only() {
    let node = Node::with_mode(Mode::Agent);
    let mode = std::fs::metadata(node.agent.as_ref().unwrap().socket.as_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
}

#[test]
fn killing_the_agent_mid_add_is_retryable_and_leaks_nothing() {
    let mut node = Node::with_mode(Mode::Agent);
    node.standard_nads();
    let marker = node.dir.path().join("slow-started");
    slow_nad(&node, &marker);
    node.pod("a", "blue,slow");
    let pod = Netns::new("vlpa");
    let conf = node.conf("1.0.0");

    let outcome = std::thread::scope(|s| {
        let add = s.spawn(|| node.call("ADD", Some(&pod), "ctr-a", "a", &conf));
        assert!(
            common::wait_until(Duration::from_secs(20), || marker.exists()),
            "the slow delegate never started"
        );
        // The cluster network and blue are attached by now; slow is sleeping.
        let agent = node.agent.as_ref().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        add.join().unwrap()
    });
    let msg = outcome.expect_err(11, "ADD while the agent is killed");
    assert!(msg.contains("agent"), "{msg}");
    // The orphaned delegate would create its link after 3 s: give it time to
    // show up if it survived its parent.
    std::thread::sleep(Duration::from_secs(4));
    assert_clean(&node, &pod);

    node.agent().restart();
    std::fs::remove_file(&marker).unwrap();
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD after the agent restarted");
    assert_eq!(pod.links(), vec!["eth0", "net1", "net2"]);
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL");
    assert_clean(&node, &pod);
}

#[test]
fn del_and_check_work_with_the_agent_down_add_does_not() {
    let mut node = Node::with_mode(Mode::Agent);
    node.standard_nads();
    node.pod("a", "blue,red");
    node.pod("b", "blue");
    let (pa, pb) = (Netns::new("vlpa"), Netns::new("vlpb"));
    let conf = node.conf("1.0.0");
    node.call("ADD", Some(&pa), "ctr-a", "a", &conf)
        .expect_ok("ADD through the agent");
    node.agent().kill();

    node.call("CHECK", Some(&pa), "ctr-a", "a", &conf)
        .expect_ok("CHECK from state with the agent down");
    let msg = node
        .call("ADD", Some(&pb), "ctr-b", "b", &conf)
        .expect_err(11, "ADD with the agent down");
    assert!(msg.contains("connect to the agent"), "{msg}");
    assert!(pb.links().is_empty(), "ADD did nothing: {:?}", pb.links());
    let status = node
        .call_env("STATUS", "", "", "", &node.conf("1.1.0"), &[])
        .expect_err(50, "STATUS with the agent down");
    assert!(status.contains("agent"), "{status}");

    node.call("DEL", Some(&pa), "ctr-a", "a", &conf)
        .expect_ok("DEL with the agent down");
    node.call("DEL", None, "ctr-a", "a", &conf)
        .expect_ok("second DEL with the agent down");
    assert_clean(&node, &pa);
}

#[test]
fn calls_past_the_limits_get_try_again_later() {
    let mut node = Node::new();
    node.start_agent(&["--max-in-flight", "1", "--max-queued", "0"]);
    node.standard_nads();
    let marker = node.dir.path().join("slow-started");
    slow_nad(&node, &marker);
    node.pod("a", "slow");
    node.pod("b", "blue");
    let (pa, pb) = (Netns::new("vlpa"), Netns::new("vlpb"));
    let conf = node.conf("1.0.0");

    std::thread::scope(|s| {
        let slow = s.spawn(|| node.call("ADD", Some(&pa), "ctr-a", "a", &conf));
        assert!(common::wait_until(Duration::from_secs(20), || marker.exists()));
        let msg = node
            .call("ADD", Some(&pb), "ctr-b", "b", &conf)
            .expect_err(11, "ADD past the limits");
        assert!(msg.contains("busy"), "{msg}");
        assert!(pb.links().is_empty());
        slow.join().unwrap().expect_ok("the slow ADD");
    });
    node.call("ADD", Some(&pb), "ctr-b", "b", &conf)
        .expect_ok("ADD once a slot is free");
    for (p, c, n) in [(&pa, "ctr-a", "a"), (&pb, "ctr-b", "b")] {
        node.call("DEL", Some(p), c, n, &conf).expect_ok("DEL");
    }
    assert_clean(&node, &pa);
    assert_clean(&node, &pb);
}

/// The agent installs the shim and a config list that sorts first and wraps
/// the node's default network; a runtime using that config gets the default
/// network through the agent; SIGTERM (with --uninstall-on-exit) and
/// `virtlink agent --uninstall` remove both again.
#[test]
fn install_wraps_the_default_network_and_uninstall_removes_it() {
    let mut node = Node::new();
    let (bin, net) = (
        node.dir.path().join("opt-cni-bin"),
        node.dir.path().join("net.d"),
    );
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&net).unwrap();
    let mut default = node.conf("1.0.0")["clusterNetwork"].clone();
    default["plugins"] = json!([{"type": "bridge", "bridge": "cni-pod", "isGateway": true,
        "ipam": default["ipam"].clone()}, {"type": "portmap", "capabilities": {"portMappings": true}}]);
    let default =
        json!({"cniVersion": "1.0.0", "name": "podnet", "plugins": default["plugins"].clone()});
    std::fs::write(net.join("10-podnet.conflist"), default.to_string()).unwrap();
    let (shim, state) = (common::plugin_binary(), node.state());
    let install_args = [
        "--cni-bin-dir",
        bin.to_str().unwrap(),
        "--cni-conf-dir",
        net.to_str().unwrap(),
        "--shim-binary",
        shim.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let mut args = vec!["--install", "--uninstall-on-exit"];
    args.extend(install_args);
    node.start_agent(&args);
    let conf_file = net.join("00-virtlink.conflist");
    assert!(
        common::wait_until(Duration::from_secs(10), || conf_file.exists()),
        "{}",
        node.agent().log_text()
    );
    assert_eq!(
        std::fs::read(bin.join("virtlink-cni")).unwrap(),
        std::fs::read(common::plugin_binary()).unwrap(),
        "the shim was copied"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conf_file).unwrap()).unwrap();
    assert_eq!(list["plugins"][0]["clusterNetwork"], default);
    // The delegate's capabilities, and the pod's DNS for binding plugins.
    assert_eq!(
        list["plugins"][0]["capabilities"],
        json!({"portMappings": true, "dns": true})
    );

    // What a runtime hands the first plugin of that list.
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let pod = Netns::new("vlpa");
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD with the installed config");
    assert_eq!(pod.links(), vec!["eth0"]);
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL");
    assert_clean(&node, &pod);

    // SIGTERM: the agent removes what it installed and exits.
    let agent = node.agent();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", agent.log_text());
    assert!(!conf_file.exists() && !bin.join("virtlink-cni").exists());
    assert!(
        net.join("10-podnet.conflist").exists(),
        "the default network stays"
    );

    // Without --uninstall-on-exit the files survive the agent; --uninstall
    // removes them.
    let mut args = vec!["--install"];
    args.extend(install_args);
    node.start_agent(&args);
    assert!(common::wait_until(Duration::from_secs(10), || conf_file.exists()));
    node.agent().kill();
    assert!(conf_file.exists());
    let out = std::process::Command::new(common::virtlink_binary())
        .args(["agent", "--uninstall"])
        .args(install_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!conf_file.exists() && !bin.join("virtlink-cni").exists());
}

/// SIGTERM (a rollout) while an ADD runs: the agent stops taking calls but
/// answers the one it admitted before it exits.
#[test]
fn sigterm_mid_add_finishes_the_call() {
    let mut node = Node::with_mode(Mode::Agent);
    let marker = node.dir.path().join("slow-started");
    slow_nad(&node, &marker);
    node.pod("a", "slow");
    let pod = Netns::new("vlpa");
    let conf = node.conf("1.0.0");
    let outcome = std::thread::scope(|s| {
        let add = s.spawn(|| node.call("ADD", Some(&pod), "ctr-a", "a", &conf));
        assert!(common::wait_until(Duration::from_secs(20), || marker.exists()));
        let agent = node.agent.as_ref().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        add.join().unwrap()
    });
    outcome.expect_ok("ADD admitted before SIGTERM");
    assert_eq!(pod.links(), vec!["eth0", "net1"]);
    let agent = node.agent();
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", agent.log_text());
    // The agent is gone: DEL runs directly from state.
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL");
    assert_clean(&node, &pod);
}

/// Garbage on the socket gets a CNI error object (decode failure), and the
/// agent keeps serving.
#[test]
fn a_malformed_request_gets_a_cni_error() {
    use std::io::{Read, Write};
    let node = Node::with_mode(Mode::Agent);
    let socket = node.agent.as_ref().unwrap().socket.clone();
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.write_all(b"{not json").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let resp: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(resp["status"], 1, "{answer}");
    let err: serde_json::Value = serde_json::from_str(resp["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(err["code"], 6, "{err}");
    node.call_env("STATUS", "", "", "", &node.conf("1.1.0"), &[])
        .expect_ok("STATUS after the bad request");
}
