//! The `sluice-replicator` command; everything it does is in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    sluice_replicator::main()
}
