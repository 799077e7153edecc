//! `--metrics-listen`: where a long-running herald serves `/metrics`, `/status` and
//! `/status.json` (off by default; a bare port means 127.0.0.1).

use clap::Args;
use herald::http_server::{Address, Listener};
use herald::local_socket::SocketError;
use herald::telemetry::{self, Telemetry};
use tokio_util::sync::CancellationToken;

use super::Outcome;

#[derive(Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (/metrics) and a status page (/status, /status.json) here:
    /// HOST:PORT, unix:PATH, or a bare PORT for 127.0.0.1 (default: off).
    #[arg(long, env = "HERALD_METRICS_LISTEN", value_name = "ADDR", value_parser = telemetry::listen_address)]
    pub metrics_listen: Option<Address>,
}

impl MetricsArgs {
    /// Binds the listener (before anything connects: a port in use is reported at once, naming
    /// the flag) and serves `telemetry` on it until `cancel`.
    pub async fn start(
        &self,
        telemetry: &Telemetry,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(address) = &self.metrics_listen else {
            return Ok(());
        };
        let shown = address.to_string();
        let listener = Listener::bind(address).await.map_err(|err| match err {
            SocketError::Io { .. } => anyhow::Error::new(err).context(format!(
                "cannot listen on {shown}; pick another --metrics-listen"
            )),
            SocketError::InUse { .. } => Outcome::Usage(format!(
                "--metrics-listen {shown}: another live process answers on it; stop it or pick another path"
            ))
            .into(),
            SocketError::Unsafe { .. } => Outcome::Usage(format!(
                "--metrics-listen {shown}: {err}: use a directory only this user (or root) owns and can write"
            ))
            .into(),
        })?;
        tokio::spawn(telemetry::serve(
            listener,
            telemetry.clone(),
            cancel.clone(),
        ));
        Ok(())
    }
}
