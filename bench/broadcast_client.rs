//! The broadcast benchmark's Rust load generator, built on sluice-client: N clients (one socket
//! each) over N / per-channel channels, one sender per channel at a set rate, every other member
//! receiving. Prints one JSON line: deliveries, deliveries/s, send-to-receive latency p50/p95/p99
//! and this process's CPU time per 1000 deliveries. `bench/broadcast.mjs --rust` runs it against
//! the same gateway right after its Node generator, and prints both rows.
//!
//!   cargo run --release -p sluice-client --example broadcast_client -- \
//!       --url http://127.0.0.1:8787 --key <anon> [--sockets 200] [--per-channel 10] [--rate 20] [--seconds 5]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sluice_client::{ChannelEvent, Client, Payload};

struct Args {
    url: String,
    key: String,
    sockets: usize,
    per_channel: usize,
    rate: f64,
    seconds: f64,
    prefix: String,
}

fn args() -> Args {
    let mut args = Args {
        url: String::new(),
        key: String::new(),
        sockets: 200,
        per_channel: 10,
        rate: 20.0,
        seconds: 5.0,
        prefix: "bench-rust".into(),
    };
    let mut it = std::env::args().skip(1);
    while let (Some(flag), Some(value)) = (it.next(), it.next()) {
        let number = || value.parse::<f64>().unwrap_or_else(|_| panic!("{flag} takes a number, not {value}"));
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "--key" => args.key = value.clone(),
            "--sockets" => args.sockets = number() as usize,
            "--per-channel" => args.per_channel = number() as usize,
            "--rate" => args.rate = number(),
            "--seconds" => args.seconds = number(),
            "--prefix" => args.prefix = value.clone(),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(!args.url.is_empty() && !args.key.is_empty(), "--url and --key are required");
    args
}

/// This process's CPU time (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command's closing parenthesis come the state (field 3), then numbers; utime and
    // stime are fields 14 and 15, so the 12th and 13th tokens here. Positional: some fields (tpgid)
    // can be -1.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let field = |n: usize| after.split_whitespace().nth(n).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis((field(11) + field(12)) * 10)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p * sorted.len() as f64) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = args();
    let channels = (args.sockets / args.per_channel).max(1);
    let epoch = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));

    let mut members = vec![];
    for start in (0..args.sockets).step_by(50) {
        let batch = (start..args.sockets.min(start + 50)).map(|i| {
            let (url, key) = (args.url.clone(), args.key.clone());
            let topic = format!("{}-{}-{}", args.prefix, args.sockets, i % channels);
            async move {
                let client = Client::builder(url, key).connect().await.expect("connects");
                let channel = client.channel(topic).subscribe().await.expect("joins");
                (client, channel)
            }
        });
        members.extend(futures::future::join_all(batch).await);
    }
    for (_, channel) in &members {
        let mut events = channel.events();
        let (measuring, latencies) = (measuring.clone(), latencies.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let ChannelEvent::Broadcast { payload: Payload::Json(body), .. } = event {
                    if measuring.load(Ordering::Relaxed) {
                        let sent = body["t"].as_f64().unwrap_or(0.0);
                        let now = epoch.elapsed().as_secs_f64() * 1000.0;
                        latencies.lock().unwrap().push(now - sent);
                    }
                }
            }
        });
    }

    // Member i is on channel i % channels: the first `channels` members send, one per channel.
    measuring.store(true, Ordering::Relaxed);
    let cpu_before = cpu_time();
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(args.seconds);
    let tick = Duration::from_secs_f64(1.0 / args.rate);
    let senders: Vec<_> = members[..channels]
        .iter()
        .map(|(_, channel)| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let mut sent = 0u64;
                let mut interval = tokio::time::interval(tick);
                while started.elapsed() < run_for {
                    interval.tick().await;
                    let t = epoch.elapsed().as_secs_f64() * 1000.0;
                    channel.send_broadcast("tick", json!({ "t": t })).await.expect("sent");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for sender in senders {
        sent += sender.await.unwrap();
    }
    let expected = sent as usize * (args.per_channel - 1);
    let drain_until = Instant::now() + Duration::from_secs(3);
    while latencies.lock().unwrap().len() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu_before);
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_by(f64::total_cmp);
    let delivered = latencies.len();
    println!(
        "{}",
        json!({
            "sockets": args.sockets, "channels": channels,
            "offered": (sent as f64 / args.seconds).round(), "expected": expected, "delivered": delivered,
            "perSecond": (delivered as f64 / elapsed).round(),
            "p50": percentile(&latencies, 0.5), "p95": percentile(&latencies, 0.95), "p99": percentile(&latencies, 0.99),
            "cpuMsPer1000": cpu.as_secs_f64() * 1000.0 * 1000.0 / delivered.max(1) as f64,
        })
    );
    for (client, _) in &members {
        client.disconnect().await;
    }
}
