//! Logging to stderr, as text or JSON, at a level set by -v/-q or HERALD_LOG.
//! Values and credentials are never logged, at any level.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// More logging (-v: debug, -vv: trace). HERALD_LOG (e.g. `herald=debug`) overrides both.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less logging: errors only.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
}

pub fn init(args: &LogArgs) {
    let default = match (args.quiet, args.verbose) {
        (q, _) if q > 0 => "error",
        (_, 0) => "warn,herald=info,zookeeper_client=error",
        (_, 1) => "info,herald=debug,zookeeper_client=warn",
        _ => "debug,herald=trace",
    };
    let filter = std::env::var("HERALD_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
