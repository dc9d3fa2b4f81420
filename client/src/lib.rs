//! sluice-client
pub mod connection;
mod endpoint;
mod error;
pub mod event;
pub mod presence;

pub use error::Error;
