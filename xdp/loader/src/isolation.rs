//! Isolated tenant networks (docs/vnet.md): the per-node maps and the tcx
//! links of `vnet_from_pod` (one per pod veth) and `vnet_from_tunnel` (the
//! VXLAN device), all pinned in the node's directory.
//!
//! [`Isolation::open`] loads the object with the maps pinned in the
//! directory (reused when already there: a restarted agent keeps every entry);
//! the links are pinned as `link_pod_<ifname>_<ifindex>` and `link_tunnel`,
//! so traffic keeps flowing without any process. The map accessors work from
//! the pins alone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::TcAttachType;
use aya::{Ebpf, EbpfLoader};
use virtlink_xdp_common::vnet::{
    VnConfig, VnCounter, VnEndpoint, VnEndpointKey, VnIface, VnNetwork, MAP_VN_CONFIG,
    MAP_VN_COUNTERS, MAP_VN_ENDPOINTS, MAP_VN_IFACES, MAP_VN_NETWORKS, PROG_VN_FROM_POD,
    PROG_VN_FROM_TUNNEL, VN_COUNTERS, VN_MAPS,
};

use aya::programs::SchedClassifier;

use crate::{attach, bpffs, classifier, ifindex, map_err, Error, Result};

/// The program `name`, loaded into the kernel once per object (a node
/// attaches it to many interfaces).
fn loaded<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    let is_loaded = ebpf.program(name).is_some_and(|p| p.fd().is_ok());
    if !is_loaded {
        classifier(ebpf, name)?;
    }
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program {
            name,
            source: Box::new(source),
        })
}

/// The pin of the tunnel program's link.
pub const TUNNEL_LINK: &str = "link_tunnel";
/// Prefix of the pod programs' link pins.
pub const POD_LINK_PREFIX: &str = "link_pod_";

/// An IPv4 address as the programs compare it with packets (raw).
pub fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address of a raw IPv4 word.
pub fn from_raw(ip: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip.to_ne_bytes())
}

/// The pin name of the pod program's link on `ifname` (ifindex `index`):
/// the ifindex makes a recreated interface a different link.
pub fn pod_link_name(ifname: &str, index: u32) -> String {
    format!("{POD_LINK_PREFIX}{ifname}_{index}")
}

/// The isolation programs of one node, loaded with the node's pinned maps.
#[derive(Debug)]
pub struct Isolation {
    dir: PathBuf,
    ebpf: Ebpf,
}

fn open_map(dir: &Path, name: &'static str) -> Result<MapData> {
    MapData::from_pin(dir.join(name)).map_err(map_err(name, "open pinned"))
}

impl Isolation {
    /// Loads the object; the isolation maps are created pinned in `dir`, or
    /// reused when already pinned there. `dir` must be on a bpffs
    /// ([`bpffs::create_dir`]).
    pub fn open(dir: &Path) -> Result<Self> {
        bpffs::create_dir(dir)?;
        let mut loader = EbpfLoader::new();
        for name in VN_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
        let ebpf = loader
            .load(crate::OBJECT)
            .map_err(|e| Error::Load(Box::new(e)))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ebpf,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Attaches `vnet_from_pod` to `iface`'s TC ingress (in the calling
    /// thread's namespace), pinned; a link already pinned for this interface
    /// gets the new program atomically. Returns the pin's name.
    pub fn attach_pod(&mut self, iface: &str) -> Result<String> {
        let name = pod_link_name(iface, ifindex(iface)?);
        let pin = self.dir.join(&name);
        let prog = loaded(&mut self.ebpf, PROG_VN_FROM_POD)?;
        attach(
            prog,
            PROG_VN_FROM_POD,
            iface,
            TcAttachType::Ingress,
            Some(&pin),
        )?;
        Ok(name)
    }

    /// Runs `vnet_from_pod` `repeat` times on `frame` as if it arrived on
    /// the interface with index `ifindex` (in the calling thread's
    /// namespace), with the node's maps, through `BPF_PROG_TEST_RUN`: the
    /// program's verdict and its average cost per packet. Nothing is sent
    /// (a redirect is only the verdict); the counters count the runs.
    pub fn time_pod_program(
        &mut self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration)> {
        use aya::programs::{TestRun, TestRunOptions};
        // struct __sk_buff up to and including `ifindex` (offset 40).
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let prog = loaded(&mut self.ebpf, PROG_VN_FROM_POD)?;
        let out = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat,
                ..Default::default()
            })
            .map_err(|source| Error::Program {
                name: PROG_VN_FROM_POD,
                source: Box::new(source),
            })?;
        Ok((out.return_value, out.duration))
    }

    /// Attaches `vnet_from_tunnel` to the VXLAN device's TC ingress, pinned
    /// as [`TUNNEL_LINK`].
    pub fn attach_tunnel(&mut self, iface: &str) -> Result<()> {
        let pin = self.dir.join(TUNNEL_LINK);
        let prog = loaded(&mut self.ebpf, PROG_VN_FROM_TUNNEL)?;
        attach(
            prog,
            PROG_VN_FROM_TUNNEL,
            iface,
            TcAttachType::Ingress,
            Some(&pin),
        )
    }
}

/// The pinned maps and links of one node's isolation programs; needs no
/// loaded object.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_config(&self, cfg: VnConfig) -> Result<()> {
        let mut m: Array<_, VnConfig> =
            Array::try_from(aya::maps::Map::Array(open_map(&self.dir, MAP_VN_CONFIG)?))
                .map_err(map_err(MAP_VN_CONFIG, "open"))?;
        m.set(0, cfg, 0).map_err(map_err(MAP_VN_CONFIG, "write"))
    }

    pub fn config(&self) -> Result<VnConfig> {
        let m: Array<_, VnConfig> =
            Array::try_from(aya::maps::Map::Array(open_map(&self.dir, MAP_VN_CONFIG)?))
                .map_err(map_err(MAP_VN_CONFIG, "open"))?;
        m.get(&0, 0).map_err(map_err(MAP_VN_CONFIG, "read"))
    }

    pub fn ifaces(&self) -> Result<Table<u32, VnIface>> {
        Table::open(&self.dir, MAP_VN_IFACES)
    }

    pub fn endpoints(&self) -> Result<Table<VnEndpointKey, VnEndpoint>> {
        Table::open(&self.dir, MAP_VN_ENDPOINTS)
    }

    pub fn networks(&self) -> Result<Table<u32, VnNetwork>> {
        Table::open(&self.dir, MAP_VN_NETWORKS)
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(VnCounter, u64)>> {
        let map = PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(open_map(
            &self.dir,
            MAP_VN_COUNTERS,
        )?))
        .map_err(map_err(MAP_VN_COUNTERS, "open"))?;
        let mut out = Vec::with_capacity(VN_COUNTERS as usize);
        for c in VnCounter::ALL {
            let values = map
                .get(&(c as u32), 0)
                .map_err(map_err(MAP_VN_COUNTERS, "read"))?;
            out.push((c, values.iter().sum()));
        }
        Ok(out)
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, c: VnCounter) -> Result<u64> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| v))
    }

    /// The names of the pinned pod links.
    pub fn pod_links(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Io {
            step: "list pins in",
            path: self.dir.clone(),
            source,
        })?;
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(POD_LINK_PREFIX))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Detaches the pinned link `name` now and removes its pin; a missing
    /// pin is fine.
    pub fn remove_link(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        bpffs::detach_link(&path)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                step: "remove pin",
                path,
                source,
            }),
        }
    }

    /// Detaches every link and removes every pin and the directory.
    pub fn remove_all(&self) -> Result<()> {
        bpffs::remove_dir(&self.dir)
    }
}

/// A pinned hash map with typed keys and values.
#[derive(Debug)]
pub struct Table<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
}

impl<K: aya::Pod + Eq, V: aya::Pod> Table<K, V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self> {
        let map = HashMap::try_from(aya::maps::Map::HashMap(open_map(dir, name)?))
            .map_err(map_err(name, "open"))?;
        Ok(Self { name, map })
    }

    pub fn get(&self, k: &K) -> Result<Option<V>> {
        match self.map.get(k, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(self.name, "read")(e)),
        }
    }

    /// Writes `k` -> `v` unless it already holds exactly that.
    pub fn put(&mut self, k: K, v: V) -> Result<()>
    where
        V: PartialEq,
    {
        if self.get(&k)?.as_ref() == Some(&v) {
            return Ok(());
        }
        self.map
            .insert(k, v, 0)
            .map_err(map_err(self.name, "write"))
    }

    /// Removes `k`; a missing key is fine.
    pub fn remove(&mut self, k: &K) -> Result<()> {
        match self.map.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(self.name, "delete")(e)),
        }
    }

    pub fn keys(&self) -> Result<Vec<K>> {
        self.map
            .keys()
            .map(|k| k.map_err(map_err(self.name, "list")))
            .collect()
    }

    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        self.map
            .iter()
            .map(|r| r.map_err(map_err(self.name, "list")))
            .collect()
    }
}
