//! sluice inside any Rust test, in seconds, without Docker: a Supabase Realtime-compatible server
//! (Broadcast, Presence, Postgres Changes with RLS) that `@supabase/supabase-js`, `sluice-client`
//! or a raw WebSocket can connect to.
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_testkit::Error> {
//! let sluice = sluice_testkit::Sluice::default()
//!     .with_jwt_secret("a-secret-of-at-least-32-characters-long")
//!     .with_tenant_id("realtime-dev")
//!     .start()
//!     .await?;
//! sluice.sql("create table public.todos (id bigint primary key, title text, done bool)").await?;
//! sluice.publish("public.todos").await?;
//! // connect to sluice.url() (or sluice.websocket_url()) with sluice.anon_key() ...
//! sluice.stop().await?; // or let it drop
//! # Ok(()) }
//! ```
//!
//! # What a stack is
//!
//! [`Sluice::start`] runs three processes, as production runs them:
//! - **Postgres**, unless an existing database is given ([`Sluice::with_postgres_connection`]): a
//!   throwaway cluster (`wal_level = logical`) copied from a template made once per machine,
//!   with Supabase's roles (`anon`, `authenticated`, `service_role`), the `auth` schema
//!   (`auth.uid()`, `auth.role()`, `auth.jwt()`, `auth.email()`), tables of `public` granted to
//!   the API roles, and the empty publication `supabase_realtime`. Policies written for
//!   Supabase work unchanged. [`Stack::database_url`] is its superuser over loopback;
//! - the **replicator**, as a least-privilege role of its own;
//! - the **gateway** in workerd, as the self-hosted deployment runs it.
//!
//! Each listens on a port the OS chose, in a folder of its own, so tests run in parallel. The
//! stack is ready when a client can join a channel with `postgres_changes` and be told it is
//! subscribed. Dropping the [`Stack`] stops everything and deletes its folder; nothing outlives
//! the test process, even one killed with SIGKILL (the parent-death signal, and a watchdog that
//! cleans up after it).
//!
//! # Finding the programs
//!
//! The first start in a test process finds the replicator, the worker build, workerd and
//! Postgres; the first start on a machine builds or installs what is missing from the sluice
//! checkout this crate comes from (a `path` or `git` dependency) and says so on stderr. Set
//! `SLUICE_REPLICATOR_BIN`, `SLUICE_GATEWAY_BUILD` (the folder with `index.js` and
//! `index_bg.wasm`), `SLUICE_WORKERD_BIN` and `PG_BINDIR` to use prebuilt ones instead (the
//! crate's README has the table).
//!
//! # Logs
//!
//! The stack's output lines are printed, prefixed with `[sluice <process>]`, with the output of
//! the test that started it: the test harness shows them when that test fails (or with
//! `--nocapture`). [`Sluice::with_log_level`] sets how much.

mod binaries;
mod dirs;
mod error;
mod options;
mod postgres;
mod probe;
mod process;
mod stack;

pub use error::Error;
pub use options::{Sluice, DEFAULT_JWT_SECRET, DEFAULT_TENANT_ID};
pub use postgres::Database;
pub use sluice_shared::limits::Limits;
pub use stack::Stack;

/// `bytes` random bytes in hex: secrets and passwords of a stack.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the OS has randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
