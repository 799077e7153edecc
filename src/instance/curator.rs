//! The JSON form of an instance: Apache Curator's `ServiceInstance` document, with herald's
//! fields in its `payload`. Strict when writing (Curator fails a whole service's query on one bad
//! child), liberal when reading (other writers add fields and put other things in `payload`).
//!
//! ```json
//! {"name":"pg","id":"db1-5432","address":"10.0.0.5","port":5432,"sslPort":null,
//!  "payload":{"labels":{"role":"primary"},"meta":{"user":"app"},"endpoints":{"metrics":9187},"weight":1},
//!  "registrationTimeUTC":1764100000000,"serviceType":"DYNAMIC","uriSpec":null}
//! ```
//!
//! Curator facts this follows: a `payload` without `"@class"` is read as a map; `"enabled"` is
//! omitted (Curator reads `null` as false and hides the instance); `serviceType` is upper case.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{DYNAMIC, DrainNote, Instance};
use crate::layout::{InstanceId, ServiceName};

/// The largest instance document herald writes or reads. A director holds every document of
/// the services it follows, so this bounds its memory per instance (10,000 instances: at most
/// 640 MiB) well below the znode limit; metadata is a few hundred bytes in practice.
pub const MAX_DOCUMENT_LEN: usize = 64 * 1024;

/// Why a document could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error(
        "the instance document is {len} bytes, over the {MAX_DOCUMENT_LEN}-byte limit of an instance document; register less metadata"
    )]
    TooLarge { len: usize },
    #[error("not an instance document: {0}")]
    Invalid(String),
    #[error("invalid --uri-spec {spec:?}: {reason}; write e.g. {{scheme}}://{{address}}:{{port}}")]
    UriSpec { spec: String, reason: &'static str },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document<'a> {
    name: &'a str,
    id: &'a str,
    address: &'a str,
    port: Option<u16>,
    ssl_port: Option<u16>,
    payload: Payload<'a>,
    #[serde(rename = "registrationTimeUTC")]
    registration_time_utc: u64,
    service_type: &'a str,
    uri_spec: Option<&'a Value>,
}

#[derive(Serialize)]
struct Payload<'a> {
    labels: &'a BTreeMap<String, String>,
    meta: &'a BTreeMap<String, String>,
    endpoints: &'a BTreeMap<String, u16>,
    weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain: Option<DrainDoc<'a>>,
}

/// `payload.drain`: `{"reason": …, "until": ms}`, each when known.
#[derive(Serialize)]
struct DrainDoc<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
}

impl Instance {
    /// The document herald writes.
    pub fn to_json(&self) -> Result<Vec<u8>, DocumentError> {
        let document = Document {
            name: self.service.as_str(),
            id: self.id.as_str(),
            address: &self.address,
            port: self.port,
            ssl_port: self.ssl_port,
            payload: Payload {
                labels: &self.labels,
                meta: &self.meta,
                endpoints: &self.endpoints,
                weight: self.weight,
                drain: self.drained.as_ref().map(|d| DrainDoc {
                    reason: d.reason.as_deref(),
                    until: d.until_ms,
                }),
            },
            registration_time_utc: self.registered_ms,
            service_type: &self.service_type,
            uri_spec: self.uri_spec.as_ref(),
        };
        let bytes = serde_json::to_vec(&document)
            .map_err(|e| DocumentError::Invalid(format!("cannot encode: {e}")))?;
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(DocumentError::TooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// Reads the document of the znode `<service>/<id>`, whoever wrote it. Requires an object
    /// with a string `address` and valid ports; everything else has a default. The service and
    /// id are the znode's (Curator writes the same in `name` and `id`).
    ///
    /// `payload`: herald's `labels`, `meta`, `endpoints` and `weight` when present. A payload
    /// without them (Curator's map payloads) gives its string entries as `meta`, and Spring
    /// Cloud Zookeeper's `metadata` map is read as `meta` too.
    pub fn from_json(
        service: ServiceName,
        id: InstanceId,
        data: &[u8],
    ) -> Result<Instance, DocumentError> {
        let invalid = |why: &str| DocumentError::Invalid(why.to_owned());
        if data.len() > MAX_DOCUMENT_LEN {
            return Err(DocumentError::TooLarge { len: data.len() });
        }
        let value: Value =
            serde_json::from_slice(data).map_err(|e| DocumentError::Invalid(e.to_string()))?;
        let Value::Object(doc) = value else {
            return Err(invalid("not a JSON object"));
        };
        let address = match doc.get("address") {
            Some(Value::String(a)) if !a.is_empty() => a.clone(),
            _ => return Err(invalid("no \"address\" string")),
        };
        if !host_like(&address) {
            return Err(invalid(
                "\"address\" is not a host name or IP address (printable ASCII without spaces; brackets only around an IPv6 address)",
            ));
        }
        let port = port_of(&doc, "port")?;
        let ssl_port = port_of(&doc, "sslPort")?;
        let registered_ms = doc
            .get("registrationTimeUTC")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let service_type = doc
            .get("serviceType")
            .and_then(Value::as_str)
            .unwrap_or(DYNAMIC)
            .to_owned();
        let uri_spec = doc.get("uriSpec").filter(|v| !v.is_null()).cloned();
        let mut instance = Instance {
            service,
            id,
            address,
            port,
            ssl_port,
            registered_ms,
            service_type,
            uri_spec,
            labels: BTreeMap::new(),
            meta: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            weight: 1,
            drained: None,
        };
        if let Some(Value::Object(payload)) = doc.get("payload") {
            read_payload(&mut instance, payload);
        }
        Ok(instance)
    }
}

/// Whether `address` can be a host name or IP address: printable ASCII without spaces, and
/// brackets only around the whole address (`[::1]`). Anything else (a newline, a space, a
/// stray bracket or a Unicode format character) would go into every consumer's config as it
/// is — a template puts the address anywhere — so such a document is no instance.
fn host_like(address: &str) -> bool {
    let inner = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '[' && c != ']')
}

fn port_of(doc: &Map<String, Value>, field: &str) -> Result<Option<u16>, DocumentError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => port(v).map(Some).ok_or_else(|| {
            DocumentError::Invalid(format!("\"{field}\" is not a port number (1 to 65535)"))
        }),
    }
}

/// A port clients can connect to: 1 to 65535 (0 is no port).
fn port(v: &Value) -> Option<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
}

fn read_payload(instance: &mut Instance, payload: &Map<String, Value>) {
    let herald = ["labels", "meta", "endpoints", "weight"]
        .iter()
        .any(|k| payload.contains_key(*k));
    if herald {
        instance.labels = strings(payload.get("labels"));
        instance.meta = strings(payload.get("meta"));
        if let Some(Value::Object(endpoints)) = payload.get("endpoints") {
            instance.endpoints = endpoints
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), port(v)?)))
                .collect();
        }
        if let Some(weight) = payload
            .get("weight")
            .and_then(Value::as_u64)
            .and_then(|w| u32::try_from(w).ok())
        {
            instance.weight = weight;
        }
        if let Some(Value::Object(drain)) = payload.get("drain") {
            instance.drained = Some(DrainNote {
                reason: drain
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                until_ms: drain.get("until").and_then(Value::as_u64),
            });
        }
    } else if let Some(metadata @ Value::Object(_)) = payload.get("metadata") {
        instance.meta = strings(Some(metadata));
    } else {
        instance.meta = payload
            .iter()
            .filter(|(k, _)| !k.starts_with('@'))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
    }
}

/// The string entries of a JSON object (others are skipped).
fn strings(value: Option<&Value>) -> BTreeMap<String, String> {
    match value {
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Curator's `UriSpec` for a template like `{scheme}://{address}:{port}`: literal and variable
/// parts, as Curator stores them.
pub struct UriSpec;

impl UriSpec {
    pub fn parse(spec: &str) -> Result<Value, DocumentError> {
        let fail = |reason| DocumentError::UriSpec {
            spec: spec.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = spec;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(fail("a '}' without '{'")),
                Some(i) => {
                    if i > 0 {
                        parts.push(part(&rest[..i], false));
                    }
                    let after = &rest[i + 1..];
                    let end = after.find('}').ok_or_else(|| fail("a '{' without '}'"))?;
                    let name = &after[..end];
                    if name.is_empty() || name.contains('{') {
                        return Err(fail("an empty or nested {variable}"));
                    }
                    parts.push(part(name, true));
                    rest = &after[end + 1..];
                }
                None => {
                    parts.push(part(rest, false));
                    rest = "";
                }
            }
        }
        if parts.is_empty() {
            return Err(fail("it is empty"));
        }
        Ok(serde_json::json!({ "parts": parts }))
    }
}

fn part(value: &str, variable: bool) -> Value {
    serde_json::json!({ "value": value, "variable": variable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (ServiceName, InstanceId) {
        ("pg".parse().unwrap(), "db1-5432".parse().unwrap())
    }

    fn sample() -> Instance {
        let (service, id) = names();
        let mut i = Instance::new(service, id, "10.0.0.5".into(), 5432);
        i.registered_ms = 1_764_100_000_000;
        i.labels.insert("role".into(), "primary".into());
        i.meta.insert("user".into(), "app".into());
        i.endpoints.insert("metrics".into(), 9187);
        i
    }

    #[test]
    fn writes_curator_field_order_without_enabled_or_class() {
        let json = String::from_utf8(sample().to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"name":"pg","id":"db1-5432","address":"10.0.0.5","port":5432,"sslPort":null,"payload":{"labels":{"role":"primary"},"meta":{"user":"app"},"endpoints":{"metrics":9187},"weight":1},"registrationTimeUTC":1764100000000,"serviceType":"DYNAMIC","uriSpec":null}"#
        );
    }

    #[test]
    fn round_trips() {
        let mut i = sample();
        i.uri_spec = Some(UriSpec::parse("{scheme}://{address}:{port}").unwrap());
        i.ssl_port = Some(5433);
        let (service, id) = names();
        assert_eq!(
            Instance::from_json(service, id, &i.to_json().unwrap()).unwrap(),
            i
        );
    }

    #[test]
    fn reads_curator_and_spring_documents() {
        let (service, id) = names();
        let curator = br#"{"name":"pg","id":"x","address":"h","port":null,"sslPort":8443,
            "payload":{"@class":"java.util.LinkedHashMap","zone":"a","n":3},
            "registrationTimeUTC":5,"serviceType":"STATIC","uriSpec":null,"enabled":true,"extra":[1]}"#;
        let i = Instance::from_json(service.clone(), id.clone(), curator).unwrap();
        assert_eq!(
            (i.port, i.ssl_port, i.service_type.as_str()),
            (None, Some(8443), "STATIC")
        );
        assert_eq!(i.meta, BTreeMap::from([("zone".into(), "a".into())]));
        assert_eq!(i.weight, 1);
        let spring = br#"{"address":"h","port":80,"payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","id":"app","name":"app","metadata":{"version":"2"}}}"#;
        let i = Instance::from_json(service.clone(), id.clone(), spring).unwrap();
        assert_eq!(i.meta, BTreeMap::from([("version".into(), "2".into())]));
        let no_payload = br#"{"address":"h","port":80,"payload":null}"#;
        assert!(Instance::from_json(service, id, no_payload).is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_document() {
        let (service, id) = names();
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"port":80}"#,
            br#"{"address":"","port":80}"#,
            br#"{"address":"h","port":70000}"#,
            br#"{"address":"h","port":"80"}"#,
            br#"{"address":"h","sslPort":-1}"#,
            br#"{"address":"h","port":0}"#,
            br#"{"address":" ","port":80}"#,
            br#"{"address":"10.0.0.1\nserver evil 6.6.6.6:1","port":80}"#,
            br#"{"address":"10.0.0.1 backup","port":80}"#,
            br#"{"address":"[::1","port":80}"#,
            br#"{"address":"[]","port":80}"#,
            br#"{"address":"a]b","port":80}"#,
            "{\"address\":\"h\u{feff}\",\"port\":80}".as_bytes(),
            "{\"address\":\"hé\",\"port\":80}".as_bytes(),
            b"{\"address\":\"10.0.0.1\\u0000\",\"port\":80}",
        ] {
            assert!(
                Instance::from_json(service.clone(), id.clone(), bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn uri_specs() {
        assert_eq!(
            UriSpec::parse("{scheme}://{address}:{port}/x").unwrap(),
            serde_json::json!({"parts":[
                {"value":"scheme","variable":true},{"value":"://","variable":false},
                {"value":"address","variable":true},{"value":":","variable":false},
                {"value":"port","variable":true},{"value":"/x","variable":false}]})
        );
        for bad in ["", "{scheme", "scheme}", "{}", "{a{b}}"] {
            assert!(UriSpec::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oversized_documents_are_refused() {
        let mut i = sample();
        i.meta.insert("big".into(), "x".repeat(MAX_DOCUMENT_LEN));
        assert!(matches!(i.to_json(), Err(DocumentError::TooLarge { .. })));
        // Read back too: a director keeps no document over the limit.
        let mut doc = sample().to_json().unwrap();
        doc.truncate(doc.len() - 1);
        doc.extend(std::iter::repeat_n(b' ', MAX_DOCUMENT_LEN));
        doc.push(b'}');
        assert!(matches!(
            Instance::from_json("pg".parse().unwrap(), "db1".parse().unwrap(), &doc),
            Err(DocumentError::TooLarge { .. })
        ));
    }

    /// Bad input, generated: whatever bytes an instance znode holds, reading them never
    /// panics, and what is accepted is a well-formed instance.
    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::instance::strategies;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Any document (herald's, Curator's, Spring's, Nerve's, a serverset, any JSON),
            /// damaged or not: an error, or a well-formed instance with the document's own
            /// address that reads back the same once herald writes it.
            #[test]
            fn any_znode_data_is_refused_or_well_formed(data in strategies::znode_data()) {
                let data = data.0;
                let (service, id) = names();
                let Ok(i) = Instance::from_json(service.clone(), id.clone(), &data) else {
                    return Ok(());
                };
                strategies::well_formed(&i).map_err(TestCaseError::fail)?;
                prop_assert!(data.len() <= MAX_DOCUMENT_LEN);
                prop_assert_eq!((&i.service, &i.id), (&service, &id));
                let doc: Value = serde_json::from_slice(&data).unwrap();
                prop_assert_eq!(doc["address"].as_str(), Some(i.address.as_str()));
                if let Ok(written) = i.to_json() {
                    prop_assert_eq!(&Instance::from_json(service, id, &written).unwrap(), &i);
                }
            }

            /// herald does not read Nerve's or serversets' documents (no `address`): refused,
            /// however damaged.
            #[test]
            fn nerve_and_serverset_documents_are_refused(
                doc in prop_oneof![strategies::nerve_document(), strategies::serverset_document()],
                damage in strategies::damage(),
            ) {
                let (service, id) = names();
                let data = damage.apply(&serde_json::to_vec(&doc).unwrap());
                prop_assert!(Instance::from_json(service, id, &data).is_err());
            }

        }

        proptest! {
            // Fewer: each case reads every prefix of the document.
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// herald's own documents: well-formed, within the limit, read back as written;
            /// every strict prefix (a write cut short) is refused.
            #[test]
            fn herald_documents_round_trip(i in strategies::herald_instance()) {
                strategies::well_formed(&i).map_err(TestCaseError::fail)?;
                let written = i.to_json().unwrap();
                prop_assert!(written.len() <= MAX_DOCUMENT_LEN);
                let read = Instance::from_json(i.service.clone(), i.id.clone(), &written).unwrap();
                prop_assert_eq!(&read, &i);
                for cut in 0..written.len() {
                    prop_assert!(
                        Instance::from_json(i.service.clone(), i.id.clone(), &written[..cut])
                            .is_err(),
                        "prefix of {} bytes accepted", cut
                    );
                }
            }
        }
    }
}
