//! PCI addresses (`0000:03:00.1`) and VF index ranges (`0-3,7`).

use std::fmt;
use std::str::FromStr;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parse PCI address {0:?}: expected DDDD:BB:DD.F (hex domain, bus, device 00-1f, function 0-7)")]
    PciAddress(String),
    #[error("parse VF range {0:?}: {1}")]
    VfRange(String, &'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A full PCI address: domain, bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl FromStr for PciAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::PciAddress(s.to_string());
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |field: &str, len: usize| -> Result<u32> {
            if field.len() != len || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(field, 16).map_err(|_| bad())
        };
        let domain = hex(domain, 4)?;
        let bus = hex(bus, 2)?;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        if device > 0x1f || function > 7 {
            return Err(bad());
        }
        Ok(Self {
            domain: u16::try_from(domain).map_err(|_| bad())?,
            bus: u8::try_from(bus).map_err(|_| bad())?,
            device: u8::try_from(device).map_err(|_| bad())?,
            function: u8::try_from(function).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// The largest VF index a range may name (PCIe SR-IOV allows at most 65535 VFs;
/// real NICs stop far below).
pub const MAX_VF_INDEX: u32 = 4095;

/// A set of VF indexes written like the SR-IOV device plugin's `ens1f0#0-3,7`
/// suffix: comma-separated single indexes and inclusive `a-b` ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfRange {
    ranges: Vec<(u32, u32)>,
}

impl VfRange {
    pub fn contains(&self, index: u32) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= index && index <= b)
    }
}

impl FromStr for VfRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why| Error::VfRange(s.to_string(), why);
        if s.trim().is_empty() {
            return Err(bad("empty range"));
        }
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let num = |t: &str| -> Result<u32> {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("indexes must be decimal numbers"));
                }
                let n: u32 = t.parse().map_err(|_| bad("index too large"))?;
                if n > MAX_VF_INDEX {
                    return Err(bad("index above 4095"));
                }
                Ok(n)
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (num(a.trim())?, num(b.trim())?),
                None => {
                    let n = num(part)?;
                    (n, n)
                }
            };
            if a > b {
                return Err(bad("range start is above its end"));
            }
            ranges.push((a, b));
        }
        Ok(Self { ranges })
    }
}

/// `name` or `name#range`, as used by `pfNames` and `rootDevices`.
pub fn split_vf_suffix(s: &str) -> Result<(&str, Option<VfRange>)> {
    match s.split_once('#') {
        Some((name, range)) => Ok((name, Some(range.parse()?))),
        None => Ok((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_round_trips() {
        let a: PciAddress = "0000:3b:02.7".parse().unwrap();
        assert_eq!(a.bus, 0x3b);
        assert_eq!(a.device, 2);
        assert_eq!(a.function, 7);
        assert_eq!(a.to_string(), "0000:3b:02.7");
        let upper: PciAddress = "0001:AF:1F.0".parse().unwrap();
        assert_eq!(upper.to_string(), "0001:af:1f.0");
    }

    #[test]
    fn malformed_pci_addresses_are_rejected() {
        for bad in [
            "",
            "03:00.1",
            "0000:03:00",
            "0000:03:00.8",
            "0000:03:20.0",
            "000:03:00.1",
            "0000:3:00.1",
            "0000:0g:00.1",
            "0000:03:00.1x",
            "0000:03.00.1",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn vf_ranges_parse_and_match() {
        let r: VfRange = "0-3,7".parse().unwrap();
        assert!(r.contains(0) && r.contains(3) && r.contains(7));
        assert!(!r.contains(4) && !r.contains(8));
        let (name, range) = split_vf_suffix("ens1f0#2-2").unwrap();
        assert_eq!(name, "ens1f0");
        assert!(range.unwrap().contains(2));
        assert!(split_vf_suffix("ens1f0").unwrap().1.is_none());
    }

    #[test]
    fn malformed_vf_ranges_are_rejected() {
        for bad in ["", "3-1", "a-b", "1-", "-1", "1,,2", "0-99999", "1.5"] {
            assert!(bad.parse::<VfRange>().is_err(), "{bad:?} accepted");
        }
        assert!(split_vf_suffix("ens1f0#").is_err());
    }
}
