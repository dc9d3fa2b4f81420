//! The replicator's SQL connection (tokio-postgres), reopened on first use after it dropped, so
//! a Postgres restart costs a failed request or two, not a replicator restart.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls};
use tracing::warn;

/// Session settings of every connection, replication included: values print in the text forms
/// `sluice_shared::pgvalue` renders and filters compare (ISO dates, UTC).
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC";

pub struct Db {
    config: Config,
    client: Mutex<Arc<Client>>,
}

impl Db {
    pub async fn connect(mut config: Config) -> Result<Db, tokio_postgres::Error> {
        config.options(SESSION_OPTIONS);
        let client = open(&config).await?;
        Ok(Db {
            config,
            client: Mutex::new(Arc::new(client)),
        })
    }

    /// A connection of its own, for transactions.
    pub async fn dedicated(&self) -> Result<Client, tokio_postgres::Error> {
        open(&self.config).await
    }

    /// The open client, reconnecting first if the connection has closed.
    pub async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            *client = Arc::new(open(&self.config).await?);
        }
        Ok(client.clone())
    }
}

/// The server a connection's settings name: a host, a Unix socket directory, or `localhost`.
pub fn host(config: &Config) -> String {
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    }
}

async fn open(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!("DatabaseConnectionDown: the Postgres connection ended: {e}");
        }
    });
    Ok(client)
}
