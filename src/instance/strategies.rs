//! Generators of instance documents for the property tests (test builds only): herald's own
//! documents, Curator's `ServiceInstance`, Nerve's `{"host","port"}`, Twitter serversets, and
//! hostile versions of them — bad hosts and ports, wrong types, deep nesting, and byte-level
//! damage (truncation, flipped bytes, garbage, oversized documents).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use super::curator::MAX_DOCUMENT_LEN;
use super::{DrainNote, Instance, UriSpec};

/// A host a registration may well carry: a DNS name, IPv4, IPv6 (bare or bracketed).
pub fn good_host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,15}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| Ipv6Addr::from(s).to_string()),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
    ]
}

/// Characters that break one consumer format or another.
const HOSTILE: &[&str] = &[
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\0",
    "\u{b}",
    "\u{c}",
    "\u{1b}[2J",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{feff}",
    ",",
    "#",
    "'",
    "\"",
    "\\",
    "/",
    "@",
    "?",
    ";",
    "{",
    "}",
    "[",
    "]",
    ":",
    "%",
    "=",
    "$(id)",
    "${X}",
    "{{ x }}",
    "\nserver evil 6.6.6.6:1 weight 256",
    "'\nbackend_hostname9 = 'evil",
    "\n[section]\n",
    " backup",
    "\u{0}\u{0}",
];

/// A host string: good, or good with hostile pieces around or inside it, or nothing like a
/// host (empty, blank, any text, very long).
pub fn host() -> impl Strategy<Value = String> {
    let hostile = proptest::sample::select(HOSTILE);
    prop_oneof![
        3 => good_host(),
        4 => (good_host(), hostile.clone(), any::<bool>(), any::<Index>()).prop_map(
            |(h, bad, inside, at)| {
                if inside {
                    let cut = at.index(h.len() + 1);
                    format!("{}{bad}{}", &h[..cut], &h[cut..])
                } else {
                    format!("{h}{bad}")
                }
            }
        ),
        1 => Just(String::new()),
        1 => "[ \t\r\n\u{0}\u{b}\u{c}\u{85}\u{a0}]{1,4}",
        1 => any::<String>(),
        1 => "\\PC{200,3000}",
    ]
}

/// A JSON value in a port's place: good ports, edge cases and wrong types.
pub fn port_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (1u16..).prop_map(|p| json!(p)),
        1 => Just(json!(0)),
        1 => Just(json!(-1)),
        1 => Just(json!(65535)),
        1 => Just(json!(65536)),
        1 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<u64>().prop_map(|n| json!(n)),
        1 => Just(json!(1e300)),
        1 => Just(json!(5432.5)),
        1 => Just(json!(-0.0)),
        1 => Just(json!("5432")),
        1 => Just(Value::Null),
        1 => Just(json!(true)),
        1 => Just(json!([5432])),
        1 => Just(json!({"port": 5432})),
    ]
}

/// Any JSON value, nested a few levels.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Free text for labels, metadata and the like: plain, or with hostile pieces.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_./-]{0,12}",
        1 => proptest::sample::select(HOSTILE).prop_map(str::to_owned),
        1 => ("[a-z]{1,6}", proptest::sample::select(HOSTILE), "[a-z]{0,6}")
            .prop_map(|(a, bad, b)| format!("{a}{bad}{b}")),
        1 => ".{0,20}",
    ]
}

/// A string map for `labels` or `meta`; keys are the ones presets and templates look at, or
/// any.
pub fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        4 => proptest::sample::select(&[
            "role",
            "user",
            "password",
            "db",
            "data_directory",
            "application_name",
            "pgpool_flag",
        ][..])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
        1 => ".{0,8}",
    ];
    btree_map(key, text(), 0..5)
}

/// A weight: the usual ones and the extremes.
pub fn weight() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => Just(1u32),
        2 => Just(0u32),
        1 => 0u32..=256,
        1 => Just(257u32),
        1 => any::<u32>(),
    ]
}

/// An instance herald itself could write (what `herald announce` builds), with any strings in
/// the places herald takes from its user (labels, metadata, drain reason).
pub fn herald_instance() -> impl Strategy<Value = Instance> {
    let names = ("[a-z][a-z0-9-]{0,8}", "[a-zA-Z0-9][a-zA-Z0-9._-]{0,12}");
    let uri_spec = prop_oneof![
        Just(None),
        Just(Some("{scheme}://{address}:{port}")),
        Just(Some("http://{address}:{port}/x")),
    ]
    .prop_map(|s| s.and_then(|s| UriSpec::parse(s).ok()));
    let drained = proptest::option::of((
        proptest::option::of(text()),
        proptest::option::of(any::<u64>()),
    ))
    .prop_map(|d| d.map(|(reason, until_ms)| DrainNote { reason, until_ms }));
    (
        names,
        good_host(),
        1u16..,
        proptest::option::of(1u16..),
        any::<u64>(),
        proptest::sample::select(&["DYNAMIC", "STATIC", "PERMANENT"][..]),
        uri_spec,
        (string_map(), string_map()),
        btree_map(
            prop_oneof![Just("metrics".to_owned()), "[a-z]{1,8}"],
            1u16..,
            0..3,
        ),
        weight(),
        drained,
    )
        .prop_map(
            |(
                (service, id),
                address,
                port,
                ssl_port,
                registered_ms,
                service_type,
                uri_spec,
                (labels, meta),
                endpoints,
                weight,
                drained,
            )| {
                let (Ok(service), Ok(id)) = (service.parse(), id.parse()) else {
                    unreachable!("the patterns give valid names")
                };
                Instance {
                    service,
                    id,
                    address,
                    port: Some(port),
                    ssl_port,
                    registered_ms,
                    service_type: service_type.to_owned(),
                    uri_spec,
                    labels,
                    meta,
                    endpoints,
                    weight,
                    drained,
                }
            },
        )
}

/// A document shaped like herald's, with hostile values in every field herald reads.
pub fn herald_like_document() -> impl Strategy<Value = Value> {
    let address = prop_oneof![
        6 => host().prop_map(Value::String),
        1 => any_json(),
    ];
    let map_of_strings = prop_oneof![
        4 => string_map().prop_map(|m| json!(m)),
        1 => any_json(),
    ];
    let endpoints = prop_oneof![
        3 => btree_map(prop_oneof![Just("metrics".to_owned()), "[a-z]{1,8}"], port_value(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => any_json(),
    ];
    let weight = prop_oneof![
        4 => weight().prop_map(|w| json!(w)),
        1 => port_value(),
    ];
    let drain = proptest::option::of(prop_oneof![
        json_object_of(
            ("reason", text().prop_map(Value::String)),
            ("until", port_value())
        ),
        any_json(),
    ]);
    (
        address,
        port_value(),
        port_value(),
        (
            map_of_strings.clone(),
            map_of_strings,
            endpoints,
            weight,
            drain,
        ),
        prop_oneof![Just(json!("DYNAMIC")), Just(json!("STATIC")), any_json()],
        prop_oneof![Just(json!(1_764_100_000_000u64)), port_value()],
    )
        .prop_map(
            |(address, port, ssl_port, (labels, meta, endpoints, weight, drain), kind, at)| {
                let mut payload = json!({
                    "labels": labels, "meta": meta, "endpoints": endpoints, "weight": weight,
                });
                if let (Some(drain), Some(map)) = (drain, payload.as_object_mut()) {
                    map.insert("drain".to_owned(), drain);
                }
                json!({
                    "name": "pg", "id": "i1", "address": address, "port": port,
                    "sslPort": ssl_port, "payload": payload, "registrationTimeUTC": at,
                    "serviceType": kind, "uriSpec": null,
                })
            },
        )
}

/// `{a: A, b: B}`.
fn json_object_of(
    a: (&'static str, impl Strategy<Value = Value>),
    b: (&'static str, impl Strategy<Value = Value>),
) -> impl Strategy<Value = Value> {
    let (ka, a) = a;
    let (kb, b) = b;
    (a, b).prop_map(move |(a, b)| json!({ ka: a, kb: b }))
}

/// Apache Curator's `ServiceInstance`, with a map payload (`@class`), Spring Cloud's payload,
/// or none.
pub fn curator_document() -> impl Strategy<Value = Value> {
    let payload = prop_oneof![
        Just(Value::Null),
        string_map().prop_map(|m| {
            let mut m: serde_json::Map<String, Value> =
                m.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            m.insert("@class".into(), json!("java.util.LinkedHashMap"));
            Value::Object(m)
        }),
        string_map().prop_map(|m| json!({
            "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
            "id": "app", "name": "app", "metadata": m,
        })),
        any_json(),
    ];
    (
        host(),
        port_value(),
        port_value(),
        payload,
        proptest::sample::select(&["DYNAMIC", "STATIC", "PERMANENT", "dynamic", ""][..]),
        any::<bool>(),
    )
        .prop_map(|(address, port, ssl_port, payload, kind, enabled)| {
            json!({
                "name": "pg", "id": "5f1c", "address": address, "port": port,
                "sslPort": ssl_port, "payload": payload, "registrationTimeUTC": 1_764_100_000_000u64,
                "serviceType": kind, "uriSpec": null, "enabled": enabled,
            })
        })
}

/// Nerve's registration: `{"host": …, "port": …}` (and sometimes a name and labels).
pub fn nerve_document() -> impl Strategy<Value = Value> {
    (host(), port_value(), proptest::option::of(text())).prop_map(|(host, port, name)| {
        let mut doc = json!({"host": host, "port": port});
        if let (Some(name), Some(map)) = (name, doc.as_object_mut()) {
            map.insert("name".into(), json!(name));
        }
        doc
    })
}

/// A Twitter (Finagle) serverset member.
pub fn serverset_document() -> impl Strategy<Value = Value> {
    (
        host(),
        port_value(),
        host(),
        port_value(),
        proptest::sample::select(&["ALIVE", "DEAD", "STARTING", ""][..]),
    )
        .prop_map(|(host, port, admin_host, admin_port, status)| {
            json!({
                "serviceEndpoint": {"host": host, "port": port},
                "additionalEndpoints": {"admin": {"host": admin_host, "port": admin_port}},
                "status": status,
                "shard": 0,
            })
        })
}

/// Any of the document shapes above, as bytes (herald's own documents written by
/// [`Instance::to_json`]).
pub fn document() -> impl Strategy<Value = Vec<u8>> {
    let written = herald_instance().prop_map(|i| {
        i.to_json()
            .unwrap_or_else(|_| b"{\"address\":\"h\",\"port\":1}".to_vec())
    });
    let as_bytes = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    prop_oneof![
        2 => written,
        3 => herald_like_document().prop_map(as_bytes),
        2 => curator_document().prop_map(as_bytes),
        1 => nerve_document().prop_map(as_bytes),
        1 => serverset_document().prop_map(as_bytes),
        1 => any_json().prop_map(as_bytes),
    ]
}

/// Byte-level damage to a document.
#[derive(Debug, Clone)]
pub enum Damage {
    None,
    /// Cut at this index (of the document's length + 1).
    Truncate(Index),
    /// Bytes replaced at these indices.
    Flip(Vec<(Index, u8)>),
    /// Bytes inserted at this index.
    Splice(Index, Vec<u8>),
    /// Replaced by these bytes.
    Garbage(Vec<u8>),
    /// Nested `depth` levels deep (`[[[…]]]` or `{"a":{"a":…}}`), inside the payload or alone.
    Nest {
        depth: usize,
        objects: bool,
    },
    /// Blown past the document limit with padding.
    Oversize,
}

pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => Just(Damage::None),
        2 => any::<Index>().prop_map(Damage::Truncate),
        2 => vec((any::<Index>(), any::<u8>()), 1..4).prop_map(Damage::Flip),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Damage::Splice(at, b)),
        1 => vec(any::<u8>(), 0..256).prop_map(Damage::Garbage),
        1 => (1usize..40_000, any::<bool>()).prop_map(|(depth, objects)| Damage::Nest { depth, objects }),
        1 => Just(Damage::Oversize),
    ]
}

impl Damage {
    pub fn apply(&self, doc: &[u8]) -> Vec<u8> {
        match self {
            Damage::None => doc.to_vec(),
            Damage::Truncate(at) => doc[..at.index(doc.len() + 1)].to_vec(),
            Damage::Flip(flips) => {
                let mut out = doc.to_vec();
                if !out.is_empty() {
                    for (at, byte) in flips {
                        let i = at.index(out.len());
                        out[i] = *byte;
                    }
                }
                out
            }
            Damage::Splice(at, bytes) => {
                let mut out = doc.to_vec();
                let i = at.index(out.len() + 1);
                out.splice(i..i, bytes.iter().copied());
                out
            }
            Damage::Garbage(bytes) => bytes.clone(),
            Damage::Nest { depth, objects } => {
                let (open, close) = if *objects {
                    (&b"{\"a\":"[..], &b"}"[..])
                } else {
                    (&b"["[..], &b"]"[..])
                };
                let mut nested = open.repeat(*depth);
                nested.extend_from_slice(b"1");
                nested.extend(close.repeat(*depth));
                // Inside the payload when the document is an object, so every other field is
                // in place; alone otherwise.
                match doc.strip_suffix(b"}") {
                    Some(head) if doc.starts_with(b"{") && doc.len() > 2 => {
                        let mut out = head.to_vec();
                        out.extend_from_slice(b",\"payload\":{\"meta\":");
                        out.extend(nested);
                        out.extend_from_slice(b"}}");
                        out
                    }
                    _ => nested,
                }
            }
            Damage::Oversize => {
                let mut out = doc.to_vec();
                out.extend(std::iter::repeat_n(b' ', MAX_DOCUMENT_LEN + 1));
                out
            }
        }
    }
}

/// Bytes that show as text with escapes when a case fails.
#[derive(Clone)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// A document, maybe damaged, as the bytes a znode holds.
pub fn znode_data() -> impl Strategy<Value = Bytes> {
    (document(), damage()).prop_map(|(doc, damage)| Bytes(damage.apply(&doc)))
}

/// What every instance herald reads must be, whoever wrote its document: an address a
/// consumer's config can hold as one word (not empty, no whitespace, no control character),
/// ports clients can connect to (1 to 65535).
pub fn well_formed(i: &Instance) -> Result<(), String> {
    if i.address.is_empty() {
        return Err("empty address".into());
    }
    if i.address
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "address {:?} has whitespace, a control or a non-ASCII character",
            i.address
        ));
    }
    let inner = i
        .address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'));
    if inner.unwrap_or(&i.address).contains(['[', ']']) || inner == Some("") {
        return Err(format!("address {:?} has stray brackets", i.address));
    }
    if i.port == Some(0) || i.ssl_port == Some(0) {
        return Err(format!("port {:?} sslPort {:?}", i.port, i.ssl_port));
    }
    if let Some((name, _)) = i.endpoints.iter().find(|(_, port)| **port == 0) {
        return Err(format!("endpoint {name:?} has port 0"));
    }
    Ok(())
}
