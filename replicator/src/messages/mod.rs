//! Everything about `realtime.messages`, the table behind private channels and Broadcast from
//! the database:
//!
//! - [`authorization`]: what a user may read and write on a private channel, by its RLS policies.
//! - [`broadcasts`]: inserted rows as broadcasts to their channel; replay of stored ones.
//! - [`api`]: the internal endpoints hubs call (`/v1/authorize`, `/v1/replay`).

pub mod api;
pub mod authorization;
pub mod broadcasts;
