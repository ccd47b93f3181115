#![forbid(unsafe_code)]

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the operator caches every finding while watch pages
/// come and go, and glibc's arenas keep the freed pages of the latter resident. Built without
/// transparent huge pages (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match defender_operator::cli::main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The user's to read: one line, no backtrace.
            eprintln!("error: {}", defender_operator::cli::describe(&error));
            ExitCode::FAILURE
        }
    }
}
