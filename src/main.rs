//! The command line: parse, set up logs, dispatch to the library.

use std::process::ExitCode;

use automation_gateway::config::{Cli, Command, Config};
use automation_gateway::{App, store::Store, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            println!("{}", automation_gateway::openapi_spec());
            ExitCode::SUCCESS
        }
        Command::Token => {
            let (token, hash) = automation_gateway::new_token();
            println!("token:  {token}\nsha256: {hash}");
            ExitCode::SUCCESS
        }
        Command::Migrate => report(migrate(&config).await),
        Command::Serve => report(serve(config).await),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("automation-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(config: &Config) -> anyhow::Result<telemetry::TelemetryGuard> {
    let guard = telemetry::init_logs(&config.telemetry)?;
    for name in Config::unknown_env_vars() {
        tracing::warn!(variable = %name, "unknown GATEWAY_* environment variable ignored (typo?)");
    }
    tracing::info!(config = %config.summary(), version = env!("CARGO_PKG_VERSION"), "starting");
    Ok(guard)
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let guard = init(config)?;
    let store = Store::connect(&config.store).await?;
    store.migrate().await?;
    tracing::info!("migrations applied");
    store.close().await;
    guard.shutdown();
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let guard = init(&config)?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http.listen))?;
    let app = App::build(config).await?;
    app.run(listener, automation_gateway::shutdown_signal()).await?;
    // The batch exporter's thread flushes the last spans here.
    tokio::task::spawn_blocking(move || guard.shutdown()).await?;
    Ok(())
}
