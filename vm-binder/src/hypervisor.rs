//! What the hypervisor needs for one VM interface: QEMU command line
//! arguments and the libvirt domain XML element.

use crate::mac::Mac;

/// A guest NIC backed by a tap device in the launcher pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic<'a> {
    /// The VM interface's name (used for the QEMU ids and the libvirt alias).
    pub name: &'a str,
    pub tap: &'a str,
    pub mac: Mac,
    pub mtu: Option<u32>,
}

/// QEMU ids allow letters, digits, `-`, `.`, `_` and must start with a letter.
fn qemu_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{clean}")
}

/// Escapes text for an XML attribute value in single quotes.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

impl TapNic<'_> {
    /// `-netdev tap,... -device virtio-net-pci,...` (never `vhost=on`).
    pub fn qemu_args(&self) -> Vec<String> {
        let netdev = qemu_id("hostua-", self.name);
        let mut device = format!(
            "virtio-net-pci,netdev={netdev},id={},mac={}",
            qemu_id("ua-", self.name),
            self.mac
        );
        if let Some(mtu) = self.mtu {
            device.push_str(&format!(",host_mtu={mtu}"));
        }
        vec![
            "-netdev".to_string(),
            format!(
                "tap,id={netdev},ifname={},script=no,downscript=no",
                self.tap
            ),
            "-device".to_string(),
            device,
        ]
    }

    /// The libvirt `<interface type='ethernet'>` element.
    pub fn libvirt_xml(&self) -> String {
        let mut xml = String::from("<interface type='ethernet'>\n");
        xml.push_str(&format!("  <mac address='{}'/>\n", self.mac));
        xml.push_str(&format!(
            "  <target dev='{}' managed='no'/>\n",
            xml_escape(self.tap)
        ));
        xml.push_str("  <model type='virtio'/>\n");
        if let Some(mtu) = self.mtu {
            xml.push_str(&format!("  <mtu size='{mtu}'/>\n"));
        }
        xml.push_str(&format!(
            "  <alias name='{}'/>\n",
            xml_escape(&qemu_id("ua-", self.name))
        ));
        xml.push_str("</interface>");
        xml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_nic_output() {
        let nic = TapNic {
            name: "default",
            tap: "tap0",
            mac: "02:00:00:aa:bb:cc".parse().unwrap(),
            mtu: Some(1450),
        };
        assert_eq!(
            nic.qemu_args(),
            vec![
                "-netdev",
                "tap,id=hostua-default,ifname=tap0,script=no,downscript=no",
                "-device",
                "virtio-net-pci,netdev=hostua-default,id=ua-default,mac=02:00:00:aa:bb:cc,host_mtu=1450",
            ]
        );
        assert!(!nic.qemu_args().concat().contains("vhost"));
        assert_eq!(
            nic.libvirt_xml(),
            "<interface type='ethernet'>\n  <mac address='02:00:00:aa:bb:cc'/>\n  \
             <target dev='tap0' managed='no'/>\n  <model type='virtio'/>\n  \
             <mtu size='1450'/>\n  <alias name='ua-default'/>\n</interface>"
        );
    }

    #[test]
    fn odd_names_are_made_safe() {
        let nic = TapNic {
            name: "a,b='c'",
            tap: "tap1",
            mac: Mac::default(),
            mtu: None,
        };
        let args = nic.qemu_args();
        assert_eq!(
            args[1],
            "tap,id=hostua-a_b__c_,ifname=tap1,script=no,downscript=no"
        );
        assert!(!args[3].contains("host_mtu"));
        assert!(nic.libvirt_xml().contains("<alias name='ua-a_b__c_'/>"));
        assert_eq!(xml_escape("<'&\">"), "&lt;&apos;&amp;&quot;&gt;");
    }
}
