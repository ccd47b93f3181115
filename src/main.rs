#![forbid(unsafe_code)]

use std::process::ExitCode;

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
