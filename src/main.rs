#[tokio::main]
async fn main() -> anyhow::Result<()> {
    defender_operator::cli::main().await
}
