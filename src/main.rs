//! The `moonwire` command: run the broker, or check a config.

use anyhow::Context;
use clap::{Parser, Subcommand};
use moonwire::app::App;
use moonwire::config::{Config, DEFAULTS};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "moonwire",
    version,
    about = "MQTT broker for home automation and security devices"
)]
struct Cli {
    /// TOML config file layered over the embedded defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Run,
    /// Validate the configuration and print the effective result.
    CheckConfig {
        /// Print the embedded defaults instead.
        #[arg(long)]
        print_defaults: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig {
            print_defaults: true,
        } => {
            print!("{DEFAULTS}");
            Ok(())
        }
        Command::CheckConfig { .. } => {
            let cfg = Config::load(cli.config.as_deref())?;
            println!("config ok\n{cfg:#?}");
            Ok(())
        }
        Command::Run => run(cli.config),
    }
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let running = App::new(cfg).start().await?;
        let token = running.shutdown_token();
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutdown requested"),
            _ = token.cancelled() => {}
        }
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
