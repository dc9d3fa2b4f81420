//! A Rust client for Supabase Realtime and sluice: Broadcast, Presence and Postgres Changes over
//! the Phoenix channels protocol, with realtime-js's reconnect, rejoin and token behaviour.
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_client::Error> {
//! use futures::StreamExt;
//! use sluice_client::{ChannelEvent, Client};
//!
//! let client = Client::builder("http://127.0.0.1:8787", "<anon key>").connect().await?;
//! let channel = client.channel("room1").broadcast_self(true).subscribe().await?;
//! let mut events = channel.events();
//! channel.send_broadcast("cursor", serde_json::json!({ "x": 1 })).await?;
//! while let Some(event) = events.next().await {
//!     if let ChannelEvent::Broadcast { event, payload } = event {
//!         println!("{event}: {payload:?}");
//!         break;
//!     }
//! }
//! client.disconnect().await;
//! # Ok(()) }
//! ```
//!
//! - [`client`]: [`Client`], its builder and its settings.
//! - [`channel`]: [`Channel`] — subscribing, the event stream, sending, presence.
//! - [`event`]: what a channel delivers ([`ChannelEvent`]) and its payload types.
//! - [`presence`]: presence state synced as realtime-js does.
//! - `connection`: the connection's logic as a sans-IO state machine (heartbeat, reconnect,
//!   rejoin, buffered pushes); `driver` runs it on tokio and a WebSocket.
//! - [`Error`]: every failure, typed.
//!
//! The frames come from `sluice-shared`, the codec the server uses, so the two cannot drift.

#![warn(missing_docs)]

pub mod channel;
pub mod client;
mod connection;
mod driver;
mod endpoint;
mod error;
pub mod event;
pub mod presence;
mod rest;

pub use channel::{Channel, ChannelBuilder, Events};
pub use client::{Client, ClientBuilder};
pub use connection::Backoff;
pub use driver::Metric;
pub use error::Error;
pub use event::{
    ChannelEvent, CloseReason, Column, HeartbeatStatus, Payload, PostgresChange, PostgresChangeEvent, SubscribeStatus,
    SystemMessage,
};
pub use presence::Presences;
