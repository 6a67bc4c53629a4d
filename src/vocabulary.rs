//! The words every stage of a broadcast shares: the verdict [`policy`], a
//! [`target`] and where targets come from, one pod's [`delivery`] and its
//! outcome, the [`headers`] the router owns, configuration [`problem`]s and
//! who is to [`blame`] for an error.
//!
//! These are leaf modules: they import nothing else of the router, so any
//! module may use them without creating a cycle (see
//! `docs/architecture.md`).

pub mod blame;
pub mod delivery;
pub mod headers;
pub mod policy;
pub mod problem;
pub mod target;
