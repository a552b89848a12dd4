//! What a plugin author runs from the `meshgate` command, from an empty directory to a tested component:
//!
//! - [`scaffold`] (pure): the files of a standalone plugin crate for one world — its own copy of the WIT
//!   at this gateway's interface version, a small guest SDK (panic hook, log macros, typed settings), a
//!   working example and its tests, a `Cargo.lock` pinned to the versions the shipped plugins build with;
//! - [`build`]: cargo for `wasm32-unknown-unknown`, then the core module turned into a component in
//!   process (no `wasm-tools` to install), checked by loading it the way the gateway does;
//! - [`toolchain`]: the target check and componentizing, shared with the build of the shipped plugins;
//! - [`trial`]: a plugin run against given inputs (names, settings, a catalog directory) without a
//!   gateway, printing each decision and a summary.

pub mod build;
mod error;
pub mod scaffold;
pub mod toolchain;
pub mod trial;

pub use error::AuthorError;
pub use scaffold::World;
