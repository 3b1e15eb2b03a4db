//! The subcommands, one file (or folder) each.
pub(crate) mod bench;
pub(crate) mod demo;
pub(crate) mod drill;
pub(crate) mod health;
pub(crate) mod inspect;
pub(crate) mod listen;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod soak;
