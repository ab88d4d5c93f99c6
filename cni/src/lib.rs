//! virtlink-cni: a CNI meta-plugin in the style of Multus.
//!
//! The runtime calls the plugin for a pod; the plugin reads the pod's network
//! selection (its own cluster network, the `k8s.v1.cni.cncf.io/networks`
//! annotation), resolves each network to a NetworkAttachmentDefinition,
//! calls the delegate plugins, keeps what it did on disk and reports NPWG
//! network-status. Data flows one way:
//! runtime -> [`plugin`] -> [`attach`] -> ([`source`], [`delegate`], [`state`]).

pub mod attach;
pub mod binding;
pub mod config;
pub mod daemon;
pub mod delegate;
pub mod devices;
pub mod plugin;
pub mod routes;
pub mod source;
pub mod spec;
pub mod state;

/// An error and all its sources as one line: `outer: inner: root`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
