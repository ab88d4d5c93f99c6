//! MAC addresses: parsing, formatting, stable and random generation.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable, locally administered unicast MAC (`02:...`) derived from
    /// the VM's namespace, name and interface name, so that it survives
    /// restarts and migrations of the launcher pod.
    pub fn stable(namespace: &str, vm: &str, iface: &str) -> Self {
        // FNV-1a 64: fixed, unlike std's DefaultHasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in namespace
            .bytes()
            .chain([0])
            .chain(vm.bytes())
            .chain([0])
            .chain(iface.bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let b = hash.to_be_bytes();
        Self([0x02, b[0], b[1], b[2], b[3], b[4]])
    }

    /// A random locally administered unicast MAC.
    pub fn random() -> std::io::Result<Self> {
        let mut b = [0u8; 6];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        b[0] = (b[0] & 0xfe) | 0x02;
        Ok(Self(b))
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct ParseMacError(pub String);

impl FromStr for Mac {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseMacError(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (slot, part) in b.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Self(b))
    }
}

impl TryFrom<&[u8]> for Mac {
    type Error = ParseMacError;
    fn try_from(v: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 6]>::try_from(v)
            .map(Mac)
            .map_err(|_| ParseMacError(format!("{v:02x?}")))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let m: Mac = "02:AB:cd:00:11:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:11:ff");
        assert_eq!("02-ab-cd-00-11-ff".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "02:ab",
            "02:ab:cd:00:11:ff:00",
            "02:ab:cd:00:11:fg",
            "2:ab:cd:00:11:ff0",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"02:ab:cd:00:11:ff\"");
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), m);
    }

    #[test]
    fn stable_mac_is_stable_local_unicast_and_distinct() {
        let a = Mac::stable("ns", "vm1", "default");
        assert_eq!(a, Mac::stable("ns", "vm1", "default"));
        assert_eq!(a.0[0], 0x02);
        assert_ne!(a, Mac::stable("ns", "vm1", "blue"));
        assert_ne!(a, Mac::stable("ns", "vm2", "default"));
        assert_ne!(a, Mac::stable("other", "vm1", "default"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(Mac::stable("n", "ab", "c"), Mac::stable("n", "a", "bc"));
        // Pinned value: changing the algorithm would change guests' MACs.
        assert_eq!(a.to_string(), "02:7f:64:a6:30:e7");
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..32 {
            let m = Mac::random().unwrap();
            assert!(m.is_unicast());
            assert_eq!(m.0[0] & 0x02, 0x02);
        }
    }
}
