//! The CNI protocol itself (spec 1.1): environment, error objects, versions
//! and results, independent of what virtlink does with them.

pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use env::{Command, Env};
pub use error::{code, CniError};
pub use result::CniResult;
pub use version::Version;
