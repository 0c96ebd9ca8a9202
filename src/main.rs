//! The `switchboard` command: `serve`, `check-config` and `token`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchboard::config::{Config, ConfigError};
use switchboard::server::Server;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A WebRTC SFU: WHIP in, WHEP out"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the server (with the embedded defaults unless --config is given).
    Serve(ServeArgs),
    /// Validate a configuration file and explain what is wrong with it.
    CheckConfig {
        /// The TOML file to check (with SWITCHBOARD_* variables applied, as `serve` does).
        file: PathBuf,
    },
    /// Mint a bearer token (HS256) for WHIP/WHEP when auth is on; prints it.
    Token(TokenArgs),
    /// Load-test a WHIP/WHEP server (this one or any other): one synthetic
    /// publisher and N viewers over real UDP; CPU per packet, memory per viewer,
    /// latency, first-frame time and losses.
    Load(switchboard::load::LoadArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// The room, or a prefix pattern such as `team-*`.
    #[arg(long)]
    room: String,
    /// The participant's identity (links its WHIP and WHEP sessions).
    #[arg(long)]
    identity: String,
    /// Its display name.
    #[arg(long)]
    name: Option<String>,
    /// It may publish (WHIP).
    #[arg(long)]
    publish: bool,
    /// It may watch (WHEP).
    #[arg(long)]
    subscribe: bool,
    /// It may send data channel messages.
    #[arg(long)]
    data: bool,
    /// It may use the room API.
    #[arg(long)]
    admin: bool,
    /// How long it is good for, e.g. 1h, 30m, 2days.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// The HS256 secret (auth.hs256_secret); else from the environment
    /// (SWITCHBOARD_AUTH_HS256_SECRET) or --config.
    #[arg(long, env = "SWITCHBOARD_AUTH_HS256_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A configuration file to take auth.hs256_secret from.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see config/switchboard.toml for every key).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// HTTP address (http.listen), e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: Option<String>,
    /// IP addresses for media, comma-separated (media.bind_ips).
    #[arg(long = "media-ip")]
    media_ip: Option<String>,
    /// Lowest media UDP port (media.udp_port_min); 0 = OS-chosen.
    #[arg(long)]
    udp_port_min: Option<String>,
    /// Highest media UDP port (media.udp_port_max).
    #[arg(long)]
    udp_port_max: Option<String>,
    /// Number of media shards (media.shards); 0 = one per core.
    #[arg(long)]
    shards: Option<String>,
    /// Public IP addresses announced behind a 1:1 NAT, comma-separated (media.public_ips).
    #[arg(long)]
    public_ip: Option<String>,
    /// Log format, `human` or `json` (log.format).
    #[arg(long)]
    log_format: Option<String>,
}

/// Exit status when a media shard's thread has stopped (EX_SOFTWARE).
const SHARD_FAILED: u8 = 70;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::CheckConfig { file } => check_config(&file),
        Commands::Serve(args) => serve(args),
        Commands::Token(args) => token(args),
        Commands::Load(args) => switchboard::load::main(args),
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let ttl = match humantime::parse_duration(&args.ttl) {
        Ok(ttl) => ttl,
        Err(e) => {
            eprintln!("--ttl {}: {e} (e.g. 1h, 30m, 2days)", args.ttl);
            return ExitCode::FAILURE;
        }
    };
    let secret = match (&args.secret, &args.config) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => match Config::from_file(path) {
            Ok(config) => config.auth.hs256_secret,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        (None, None) => String::new(),
    };
    if secret.len() < switchboard::auth::MIN_SECRET_BYTES {
        eprintln!(
            "an HS256 secret of at least {} bytes is needed: --secret, SWITCHBOARD_AUTH_HS256_SECRET or auth.hs256_secret in --config",
            switchboard::auth::MIN_SECRET_BYTES
        );
        return ExitCode::FAILURE;
    }
    if !(args.publish || args.subscribe || args.data || args.admin) {
        eprintln!("grant something: --publish, --subscribe, --data and/or --admin");
        return ExitCode::FAILURE;
    }
    let claims = switchboard::auth::Claims {
        sub: args.identity,
        name: args.name,
        room: args.room,
        publish: args.publish,
        subscribe: args.subscribe,
        data: args.data,
        admin: args.admin,
        exp: switchboard::auth::expiry_in(ttl),
    };
    match switchboard::auth::mint_hs256(&secret, &claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot sign the token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks `file` as `serve --config FILE` reads it: with the `SWITCHBOARD_*`
/// environment variables applied (a deployment keeps its secret there).
fn check_config(file: &std::path::Path) -> ExitCode {
    let result = Config::from_file(file).and_then(|mut c| {
        c.apply_env(|name| std::env::var(name).ok())?;
        c.validate().map(|()| c)
    });
    match result {
        Ok(config) => {
            println!(
                "{}: OK (http on {}, {} shard(s), media ports {}-{})",
                file.display(),
                config.http.listen,
                config.shard_count(),
                config.media.udp_port_min,
                config.media.udp_port_max
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env(|name| std::env::var(name).ok())?;
    let flags = [
        ("http.listen", &args.listen),
        ("media.bind_ips", &args.media_ip),
        ("media.udp_port_min", &args.udp_port_min),
        ("media.udp_port_max", &args.udp_port_max),
        ("media.shards", &args.shards),
        ("media.public_ips", &args.public_ip),
        ("log.format", &args.log_format),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            config.set(key, value)?;
        }
    }
    config.validate()?;
    Ok(config)
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.log);
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let drain_timeout = config.session.drain_timeout;
    runtime.block_on(async {
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("switchboard listening on http://{}", server.http_addr());
        #[cfg(feature = "fault-injection")]
        kill_a_shard_if_asked(&server);
        tokio::select! {
            _ = shutdown_signal() => {}
            shard = server.shard_failure() => {
                // Its sessions are gone and it takes no more: let the supervisor
                // (systemd, Kubernetes, Docker) start a healthy process.
                tracing::error!(shard, "a media shard stopped: exiting so the supervisor restarts the server");
                return ExitCode::from(SHARD_FAILED);
            }
        }
        // Drain: no new sessions; the running ones get `drain_timeout` to end. A
        // second signal cuts it short.
        server.drain();
        tokio::select! {
            all_ended = server.drained(drain_timeout) => {
                if all_ended {
                    tracing::info!("drained: every session ended");
                } else {
                    tracing::info!(sessions = server.session_count(), "drain timeout: ending the rest");
                }
            }
            _ = shutdown_signal() => tracing::info!("second signal: ending every session now"),
        }
        tracing::info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Each HTTP connection is a file descriptor, and the common soft limit (1024)
/// is far below `http.max_connections`: take the hard limit.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Test builds: `SWITCHBOARD_TEST_KILL_SHARD_AFTER_MS` stops shard 0 after that
/// long, to test that the process exits for its supervisor.
#[cfg(feature = "fault-injection")]
fn kill_a_shard_if_asked(server: &Server) {
    let Some(ms) = std::env::var("SWITCHBOARD_TEST_KILL_SHARD_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    std::thread::sleep(std::time::Duration::from_millis(ms));
    server.inject_fault(0, switchboard::shard::Fault::KillThread);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
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
    {
        let _ = ctrl_c.await;
    }
}

fn init_logging(log: &switchboard::config::LogConfig) {
    use switchboard::config::LogFormat;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn"));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Human => logger.init(),
        LogFormat::Json => logger.json().init(),
    }
}
