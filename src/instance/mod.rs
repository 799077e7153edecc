//! The instance document: what herald stores in `<root>/services/<service>/<id>` for one live
//! service process. The model is here; its JSON form (a superset of Apache Curator's
//! `ServiceInstance`) is in [`curator`].

mod curator;
#[cfg(test)]
pub(crate) mod strategies;

use std::collections::BTreeMap;

use crate::layout::{InstanceId, ServiceName};

pub use curator::{DocumentError, UriSpec};

/// One registered service process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub service: ServiceName,
    pub id: InstanceId,
    /// Host name or IP address clients connect to.
    pub address: String,
    /// Curator allows an instance without a plain port (only `sslPort`, or neither).
    pub port: Option<u16>,
    pub ssl_port: Option<u16>,
    /// When the instance was registered, in milliseconds since the Unix epoch (UTC).
    pub registered_ms: u64,
    /// Curator's `serviceType`: herald writes `DYNAMIC`; others are kept as read.
    pub service_type: String,
    /// Curator's `uriSpec`, kept as JSON.
    pub uri_spec: Option<serde_json::Value>,
    /// Free-form labels for selection (`role=primary`).
    pub labels: BTreeMap<String, String>,
    /// Metadata: `--meta`, `--meta-file`, and the /export declarations. May hold credentials:
    /// never logged.
    pub meta: BTreeMap<String, String>,
    /// Named extra ports (admin, metrics), like Finagle serversets' additional endpoints.
    pub endpoints: BTreeMap<String, u16>,
    /// Relative weight for load balancing; 0 means "registered, but send nothing".
    pub weight: u32,
    /// Set while an operator keeps it drained but registered (`herald drain --soft`): why, and
    /// until when.
    pub drained: Option<DrainNote>,
}

/// What an operator said of a drain: why, and until when (it ends by itself then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainNote {
    pub reason: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub until_ms: Option<u64>,
}

impl DrainNote {
    pub fn is_empty(&self) -> bool {
        self.reason.is_none() && self.until_ms.is_none()
    }
}

impl std::fmt::Display for DrainNote {
    /// `reason: R, until 2026-12-07T16:50:00Z`, the parts there are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(reason) = &self.reason {
            parts.push(format!("reason: {reason}"));
        }
        if let Some(until) = self.until_ms {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(until);
            parts.push(format!("until {}", humantime::format_rfc3339_seconds(at)));
        }
        f.write_str(&parts.join(", "))
    }
}

/// `serviceType` of instances herald registers: removed when their session ends.
pub const DYNAMIC: &str = "DYNAMIC";

impl Instance {
    /// Whether the document says it outlives sessions: Curator's `STATIC` and `PERMANENT`
    /// registrations are persistent znodes by design.
    pub fn persistent_by_design(&self) -> bool {
        matches!(self.service_type.as_str(), "STATIC" | "PERMANENT")
    }

    /// A new instance registered now, with weight 1 and nothing else set.
    pub fn new(service: ServiceName, id: InstanceId, address: String, port: u16) -> Instance {
        Instance {
            service,
            id,
            address,
            port: Some(port),
            ssl_port: None,
            registered_ms: now_ms(),
            service_type: DYNAMIC.to_owned(),
            uri_spec: None,
            labels: BTreeMap::new(),
            meta: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            weight: 1,
            drained: None,
        }
    }
}

/// The metadata keys whose names say they hold a secret (password, secret, token, credential,
/// private or api key), for warnings that name the keys, never their values.
pub fn secret_looking<'a>(keys: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    const HINTS: [&str; 7] = [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "private",
        "api_key",
    ];
    keys.into_iter()
        .filter(|k| {
            let k = k.to_ascii_lowercase().replace('-', "_");
            HINTS.iter().any(|h| k.contains(h)) || k.ends_with("apikey")
        })
        .map(String::as_str)
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_keys_are_found_by_name() {
        let keys: Vec<String> = [
            "user",
            "PGPASSWORD",
            "db-password",
            "api-key",
            "data_directory",
            "auth_token",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            secret_looking(&keys),
            ["PGPASSWORD", "db-password", "api-key", "auth_token"]
        );
    }
}
