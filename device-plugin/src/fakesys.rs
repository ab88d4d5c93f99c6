//! A sysfs tree built from real files and symlinks in a directory, shaped like
//! the kernel's (`bus/pci/devices/<addr>` links into `devices/pci0000:00/`,
//! `driver`, `iommu_group`, `physfn` and `virtfnN` links, `class/net/<if>`
//! links). No SR-IOV or VFIO hardware exists on the development machines, so
//! the tests, the benchmark and demos discover devices in such a tree.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Intel's vendor id and the X710 PF / VF device ids, as on real nodes.
pub const VENDOR_INTEL: &str = "0x8086";
pub const DEVICE_PF: &str = "0x1572";
pub const DEVICE_VF: &str = "0x154c";

/// How a VF is bound.
#[derive(Debug, Clone)]
pub struct VfSpec {
    pub address: String,
    /// `Some(name)` for a VF bound to a kernel driver with a netdev.
    pub netdev: Option<String>,
    pub driver: String,
    pub iommu_group: u32,
}

impl VfSpec {
    /// A VF bound to `iavf` with netdev `ifname`.
    pub fn netdev(address: &str, ifname: &str) -> Self {
        Self {
            address: address.into(),
            netdev: Some(ifname.into()),
            driver: "iavf".into(),
            iommu_group: 0,
        }
    }

    /// A VF bound to `vfio-pci` in IOMMU group `group`.
    pub fn vfio(address: &str, group: u32) -> Self {
        Self {
            address: address.into(),
            netdev: None,
            driver: crate::sysfs::VFIO_DRIVER.into(),
            iommu_group: group,
        }
    }
}

/// A fake sysfs tree rooted at a directory the caller owns.
#[derive(Debug, Clone)]
pub struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    pub fn new(root: &Path) -> io::Result<Self> {
        for d in [
            "bus/pci/devices",
            "bus/pci/drivers",
            "devices/pci0000:00",
            "class/net",
            "kernel/iommu_groups",
        ] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dev_dir(&self, addr: &str) -> PathBuf {
        self.root.join("devices/pci0000:00").join(addr)
    }

    fn write(path: &Path, value: &str) -> io::Result<()> {
        // Write then rename, so a concurrent scan never reads a half-written value.
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, format!("{value}\n"))?;
        std::fs::rename(tmp, path)
    }

    fn bind_driver(&self, dir: &Path, driver: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.root.join("bus/pci/drivers").join(driver))?;
        let link = dir.join("driver");
        let _ = std::fs::remove_file(&link);
        symlink(format!("../../../bus/pci/drivers/{driver}"), link)
    }

    fn add_netdev(&self, addr: &str, ifname: &str) -> io::Result<()> {
        let ndir = self.dev_dir(addr).join("net").join(ifname);
        std::fs::create_dir_all(&ndir)?;
        Self::write(&ndir.join("operstate"), "up")?;
        Self::write(&ndir.join("type"), "1")?;
        symlink(
            format!("../../devices/pci0000:00/{addr}/net/{ifname}"),
            self.root.join("class/net").join(ifname),
        )
    }

    fn add_pci(&self, addr: &str, class: &str, device: &str, numa: i64) -> io::Result<PathBuf> {
        let dir = self.dev_dir(addr);
        std::fs::create_dir_all(&dir)?;
        Self::write(&dir.join("vendor"), VENDOR_INTEL)?;
        Self::write(&dir.join("device"), device)?;
        Self::write(&dir.join("class"), class)?;
        Self::write(&dir.join("numa_node"), &numa.to_string())?;
        Ok(dir)
    }

    fn publish(&self, addr: &str) -> io::Result<()> {
        symlink(
            format!("../../../devices/pci0000:00/{addr}"),
            self.root.join("bus/pci/devices").join(addr),
        )
    }

    /// An SR-IOV capable PF bound to `i40e`, link up, no VFs yet.
    pub fn add_pf(&self, addr: &str, ifname: &str, numa: i64) -> io::Result<()> {
        let dir = self.add_pci(addr, "0x020000", DEVICE_PF, numa)?;
        Self::write(&dir.join("sriov_totalvfs"), "64")?;
        Self::write(&dir.join("sriov_numvfs"), "0")?;
        self.bind_driver(&dir, "i40e")?;
        self.add_netdev(addr, ifname)?;
        self.publish(addr)
    }

    /// A PCI device that is not a network controller (a SATA controller).
    pub fn add_non_network(&self, addr: &str) -> io::Result<()> {
        self.add_pci(addr, "0x010601", "0xa282", 0)?;
        self.publish(addr)
    }

    /// Creates VF `index` of PF `pf` the way the kernel shows it: the VF's own
    /// directory first, its `bus/pci/devices` entry last.
    pub fn add_vf(&self, pf: &str, index: u32, spec: &VfSpec) -> io::Result<()> {
        let pf_dir = self.dev_dir(pf);
        let numa = std::fs::read_to_string(pf_dir.join("numa_node"))?
            .trim()
            .parse::<i64>()
            .unwrap_or(-1);
        let dir = self.add_pci(&spec.address, "0x020000", DEVICE_VF, numa)?;
        self.bind_driver(&dir, &spec.driver)?;
        let group = self
            .root
            .join("kernel/iommu_groups")
            .join(spec.iommu_group.to_string());
        std::fs::create_dir_all(&group)?;
        symlink(
            format!("../../../kernel/iommu_groups/{}", spec.iommu_group),
            dir.join("iommu_group"),
        )?;
        if let Some(ifname) = &spec.netdev {
            self.add_netdev(&spec.address, ifname)?;
        }
        symlink(format!("../{pf}"), dir.join("physfn"))?;
        symlink(
            format!("../{}", spec.address),
            pf_dir.join(format!("virtfn{index}")),
        )?;
        self.publish(&spec.address)?;
        self.set_numvfs(pf)
    }

    /// Removes VF `index` of PF `pf` (bus entry first, like a driver unbind).
    pub fn remove_vf(&self, pf: &str, index: u32) -> io::Result<()> {
        let pf_dir = self.dev_dir(pf);
        let link = pf_dir.join(format!("virtfn{index}"));
        let target = std::fs::read_link(&link)?;
        let addr = target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| io::Error::other("virtfn link without a target name"))?;
        std::fs::remove_file(self.root.join("bus/pci/devices").join(&addr))?;
        std::fs::remove_file(link)?;
        let dir = self.dev_dir(&addr);
        if let Ok(entries) = std::fs::read_dir(dir.join("net")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(self.root.join("class/net").join(e.file_name()));
            }
        }
        std::fs::remove_dir_all(dir)?;
        self.set_numvfs(pf)
    }

    fn set_numvfs(&self, pf: &str) -> io::Result<()> {
        let pf_dir = self.dev_dir(pf);
        let n = std::fs::read_dir(&pf_dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("virtfn"))
            .count();
        Self::write(&pf_dir.join("sriov_numvfs"), &n.to_string())
    }

    /// `sriov_numvfs` of PF `pf`.
    pub fn numvfs(&self, pf: &str) -> io::Result<u32> {
        std::fs::read_to_string(self.dev_dir(pf).join("sriov_numvfs"))?
            .trim()
            .parse()
            .map_err(io::Error::other)
    }

    /// Sets `operstate` of interface `ifname` (`up`, `down`, ...).
    pub fn set_operstate(&self, ifname: &str, state: &str) -> io::Result<()> {
        let ndir = std::fs::canonicalize(self.root.join("class/net").join(ifname))?;
        Self::write(&ndir.join("operstate"), state)
    }

    /// A non-PCI interface (a bridge or veth) with `operstate`, as a VLAN master.
    pub fn add_virtual_netdev(&self, ifname: &str) -> io::Result<()> {
        let ndir = self.root.join("devices/virtual/net").join(ifname);
        std::fs::create_dir_all(&ndir)?;
        Self::write(&ndir.join("operstate"), "up")?;
        Self::write(&ndir.join("type"), "1")?;
        symlink(
            format!("../../devices/virtual/net/{ifname}"),
            self.root.join("class/net").join(ifname),
        )
    }
}
