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
    /// Add or update a user in a users file (the password is read from the terminal or stdin).
    Passwd {
        file: PathBuf,
        user: String,
        /// Remove the user instead.
        #[arg(long)]
        delete: bool,
    },
    /// Run a block's handler once in the sandbox and print the verdict and every side effect.
    TestBlock {
        script: PathBuf,
        /// Block name (kv namespace, ctx.block); default: the script's file stem.
        #[arg(long)]
        block: Option<String>,
        /// Topic of the test message; without it, on_interval runs.
        #[arg(long)]
        topic: Option<String>,
        /// File with the payload, or `-` for stdin.
        #[arg(long)]
        payload: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value = "test-client")]
        client_id: String,
        /// The filter the block is bound with (fills ctx.matches); default: the topic.
        #[arg(long)]
        filter: Option<String>,
        /// A copy of the broker's kv file to read and write.
        #[arg(long)]
        kv: Option<PathBuf>,
        /// Directory holding lib/ for require; default: the script's directory.
        #[arg(long)]
        scripts_dir: Option<PathBuf>,
    },
    /// Local certificate authority for TLS and device certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
        /// Where the PEM files live.
        #[arg(long, default_value = "certs", global = true)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA and a server certificate for localhost, 127.0.0.1 and each --host.
    Init {
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate for a device (CN and DNS SAN = DEVICE).
    Issue { device: String },
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
        Command::Passwd {
            file,
            user,
            delete: true,
        } => {
            moonwire::auth::users::delete_user(&file, &user)?;
            eprintln!("removed {user} from {}", file.display());
            Ok(())
        }
        Command::Passwd { file, user, .. } => {
            let password = read_password()?;
            moonwire::auth::users::set_password(&file, &user, &password)?;
            eprintln!("set password for {user} in {}", file.display());
            Ok(())
        }
        Command::TestBlock {
            script,
            block,
            topic,
            payload,
            qos,
            client_id,
            filter,
            kv,
            scripts_dir,
        } => {
            let payload = match payload {
                None => Vec::new(),
                Some(p) if p.as_os_str() == "-" => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                    buf
                }
                Some(p) => std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            };
            let opts = moonwire::blocks::DryRunOptions {
                block_name: block,
                topic,
                payload: payload.into(),
                qos,
                client_id,
                filter,
                kv_path: kv,
                scripts_dir,
                ..Default::default()
            };
            let report = moonwire::blocks::dry_run(&script, opts)?;
            println!("{report}");
            if report.error.is_some() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Certs { command, dir } => {
            let files = match command {
                CertsCommand::Init { hosts, force } => moonwire::certs::init(&dir, &hosts, force)?,
                CertsCommand::Issue { device } => moonwire::certs::issue(&dir, &device)?,
            };
            for f in files {
                println!("{}", f.display());
            }
            Ok(())
        }
    }
}

/// From the terminal (asked twice, not echoed) or, when piped, the first line of stdin —
/// never from the command line, where other users could see it.
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "passwords do not match");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "empty password");
    Ok(password)
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let running = App::new(cfg).config_path(config).start().await?;
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
