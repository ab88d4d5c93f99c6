//! CNI spec versions: which ones virtlink speaks and how they compare.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The versions virtlink-cni accepts, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, used when nothing else says which.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch` spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const V0_3_0: Version = Version::new(0, 3, 0);
    pub const V0_4_0: Version = Version::new(0, 4, 0);
    pub const V1_0_0: Version = Version::new(1, 0, 0);
    pub const V1_1_0: Version = Version::new(1, 1, 0);

    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// True when virtlink-cni accepts configs of this version.
    pub fn is_supported(self) -> bool {
        SUPPORTED
            .iter()
            .any(|s| s.parse::<Version>().ok() == Some(self))
    }

    /// Results before 1.0.0 carry a `version` field in each IP.
    pub fn has_ip_version_field(self) -> bool {
        self < Self::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn supports_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn supports_gc(self) -> bool {
        self >= Self::V1_1_0
    }

    /// The newest version in `candidates` that is not newer than `self`.
    pub fn best_at_most<'a>(
        self,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Option<Version> {
        candidates
            .into_iter()
            .filter_map(|c| c.parse::<Version>().ok())
            .filter(|v| *v <= self)
            .max()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A version string that is not `major.minor.patch`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed CNI version {0:?}")]
pub struct ParseVersionError(pub String);

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseVersionError(s.to_string());
        let mut parts = s.split('.');
        let mut next = || -> Result<u32, ParseVersionError> {
            parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        let v = Version::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl PartialEq<&str> for Version {
    fn eq(&self, other: &&str) -> bool {
        other
            .parse::<Version>()
            .map(|o| o == *self)
            .unwrap_or(false)
    }
}

/// Orders version strings; malformed ones sort first.
pub fn compare(a: &str, b: &str) -> Ordering {
    a.parse::<Version>().ok().cmp(&b.parse::<Version>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        let v: Version = "1.0.0".parse().unwrap();
        assert!(v > Version::V0_4_0);
        assert!("1.0".parse::<Version>().is_err());
        assert!("1.0.0.0".parse::<Version>().is_err());
        assert!("x.1.0".parse::<Version>().is_err());
        assert!(Version::V1_1_0.is_supported());
        assert!(!Version::new(2, 0, 0).is_supported());
    }

    #[test]
    fn best_at_most_picks_newest_not_newer() {
        let plugin = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        assert_eq!(Version::V1_1_0.best_at_most(plugin), Some(Version::V1_0_0));
        assert_eq!(Version::V0_4_0.best_at_most(plugin), Some(Version::V0_4_0));
        assert_eq!(Version::new(0, 0, 1).best_at_most(plugin), None);
    }
}
