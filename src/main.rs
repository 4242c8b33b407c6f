//! The command line: parse, set up logs, dispatch to the library.

use std::process::ExitCode;

use automation_gateway::config::{Cli, Command, Config};
use automation_gateway::{App, store::Store, telemetry};
use clap::Parser;

/// Buffers of 8 to 64 KiB (each connection's HTTP buffers) from page-aligned pools, the rest from
/// mimalloc: an idle connection then costs only the pages its buffers touch (see `pool`).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: automation_gateway::pool::Pooled = automation_gateway::pool::Pooled;

/// Runs before Rust's runtime makes its first allocation: mimalloc reads its options when it maps
/// its first arena, and every chunk glibc hands out (to SQLite) should see its tuning too (see
/// `pool::tune_mimalloc`, `pool::tune_glibc`).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[cfg(target_os = "linux")]
extern "C" fn tune_allocator() {
    automation_gateway::pool::tune_mimalloc();
    #[cfg(target_env = "gnu")]
    automation_gateway::pool::tune_glibc();
}

#[tokio::main]
async fn main() -> ExitCode {
    // One crypto provider (ring) serves every TLS client in the binary (a second one, aws-lc,
    // would add ~2 MB of code).
    automation_gateway::install_tls_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
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
        Command::CheckActions { file } => check_actions(&file),
        Command::Jobs { client, command } => automation_gateway::cli::run(client, command).await,
        Command::Migrate => report(migrate(&config).await),
        Command::Serve => report(serve(config).await),
    }
}

/// A command line clap refused: help and version print and succeed; a mistake in a `jobs`
/// command exits 4 (its documented usage code), elsewhere clap's own code.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ if std::env::args().nth(1).as_deref() == Some("jobs") => ExitCode::from(automation_gateway::cli::exit::USAGE),
        _ => ExitCode::from(e.exit_code().clamp(0, 255) as u8),
    }
}

/// `check-actions FILE`: every problem on its own line, so a CI log shows them all at once.
fn check_actions(file: &std::path::Path) -> ExitCode {
    if let Err(e) = std::fs::metadata(file) {
        eprintln!("{}: cannot read: {}", file.display(), e.kind());
        return ExitCode::from(2);
    }
    match automation_gateway::executor::check_file(file) {
        Ok(checked) => {
            for w in &checked.warnings {
                println!("warning: {w}");
            }
            let names: Vec<&str> = checked.entries.iter().map(|e| e.action.as_str()).collect();
            println!("{}: {} actions OK ({})", file.display(), names.len(), names.join(", "));
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            eprintln!("{}: {} problems", file.display(), problems.len());
            ExitCode::FAILURE
        }
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
    tracing::info!(config = %config.summary(), version = env!("CARGO_PKG_VERSION"), commit = env!("GATEWAY_GIT_COMMIT"), "starting");
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
