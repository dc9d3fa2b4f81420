//! Start-to-ready and stop times of sluice-testkit stacks, and what a running stack holds in
//! memory: one stack at a time (20 starts), then 4 at once (5 rounds). Warm: the programs are
//! found (and built if needed) before the first timed start.
//!
//!   cargo run --release -p sluice-testkit --example testkit_start [-- <starts> <rounds>]
//!
//! Memory is the proportional set size (PSS) of every process working in the stack's folder
//! (Postgres's backends included), so memory shared between processes is counted once.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_testkit::Sluice;

fn pss_kib(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(dir) {
            continue;
        }
        let rollup = std::fs::read_to_string(entry.path().join("smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), sluice_testkit::Error> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (starts, rounds) = (args.first().copied().unwrap_or(20), args.get(1).copied().unwrap_or(5));
    eprintln!("warming up (finding the programs, the Postgres template)");
    Sluice::default().with_log_level("error").start().await?.stop().await?;

    println!("| stacks at once | starts | ready p50 ms | ready p99 ms | stop p50 ms | stop p99 ms | memory per stack MiB (PSS) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (at_once, rounds) in [(1, starts), (4, rounds)] {
        let (mut ready, mut stop, mut memory) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let started = futures_util::future::join_all((0..at_once).map(|_| async {
                let t = Instant::now();
                let stack = Sluice::default().with_log_level("error").start().await;
                (t.elapsed(), stack)
            }))
            .await;
            let mut stacks = vec![];
            for (took, stack) in started {
                ready.push(took);
                stacks.push(stack?);
            }
            for stack in &stacks {
                memory.push(pss_kib(stack.directory()));
            }
            let stopped = futures_util::future::join_all(stacks.into_iter().map(|stack| async {
                let t = Instant::now();
                stack.stop().await.map(|()| t.elapsed())
            }))
            .await;
            for took in stopped {
                stop.push(took?);
            }
        }
        let mean_mib = memory.iter().sum::<u64>() as f64 / memory.len() as f64 / 1024.0;
        println!(
            "| {at_once} | {} | {} | {} | {} | {} | {mean_mib:.0} |",
            ready.len(),
            ms(percentile(&mut ready, 50.0)),
            ms(percentile(&mut ready, 99.0)),
            ms(percentile(&mut stop, 50.0)),
            ms(percentile(&mut stop, 99.0)),
        );
    }
    Ok(())
}
