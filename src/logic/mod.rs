//! Pure Rust logic, free of pgrx: everything here is unit-tested with plain
//! `cargo test` and never touches a Postgres server.

pub mod advice;
pub mod classify;
pub mod context;
pub mod fk;
pub mod ident;
pub mod lifecycle;
pub mod migrate;
pub mod rls;
pub mod routing;
pub mod tenants;
