//! consentd: an office daemon that keeps signed, replicated consent, data-subject request and
//! cross-border transfer records. See ARCHITECTURE.md for the code map and its invariants.

pub mod audit;
pub mod bench;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod demo;
/// Entry points shared by the fuzz targets (fuzz/) and their stable replay test.
#[doc(hidden)]
pub mod fuzzing;
pub mod keystore;
pub mod network;
pub mod office;
pub mod policy;
pub mod projection;
pub mod protocol;
pub mod record;
pub mod replicate;
pub mod retention;
pub mod sealed;
pub mod subject;
pub mod vocab;
