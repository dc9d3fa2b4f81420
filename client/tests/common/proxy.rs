//! A TCP proxy in front of the gateway that a test controls: it can drop every connection,
//! refuse new ones for a while, or go silent (a blackhole: connections stay open, no byte passes).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Existing connections are cut and new ones closed at once.
    Down,
    /// Existing connections stay open and pass nothing; new ones are forwarded.
    Blackhole,
}

pub struct Proxy {
    pub url: String,
    mode: watch::Sender<(Mode, u64)>,
}

impl Proxy {
    pub async fn start(target_url: &str) -> Proxy {
        let target: SocketAddr = target_url.trim_start_matches("http://").parse().expect("the stack is on an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (mode, watcher) = watch::channel((Mode::Forward, 0));
        let watcher = Arc::new(watcher);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let mut watcher = (*watcher).clone();
                tokio::spawn(async move {
                    let (mode, generation) = *watcher.borrow_and_update();
                    if mode == Mode::Down {
                        return;
                    }
                    let mut client = client;
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let mode = tokio::select! {
                        _ = pipe(&mut client, &mut server) => return,
                        mode = changed_away(&mut watcher, generation) => mode,
                    };
                    if mode == Mode::Blackhole {
                        // Both ends stay open; nothing is read or written any more.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Proxy { url, mode }
    }

    /// Sets the mode; connections made before it follow it (cut, or silent).
    pub fn set(&self, mode: Mode) {
        self.mode.send_modify(|(m, generation)| {
            *m = mode;
            *generation += 1;
        });
    }
}

/// The mode a connection made at `generation` must switch to (Down or Blackhole).
async fn changed_away(watcher: &mut watch::Receiver<(Mode, u64)>, generation: u64) -> Mode {
    loop {
        if watcher.changed().await.is_err() {
            return Mode::Down;
        }
        let (mode, now) = *watcher.borrow();
        if now != generation && mode != Mode::Forward {
            return mode;
        }
    }
}

async fn pipe(client: &mut TcpStream, server: &mut TcpStream) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let up = async {
        let mut buf = vec![0u8; 16384];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16384];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}
