//! `herald env`: resolve the environment as `herald run` would and print it, secrets masked.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use herald::harness::mask;
use serde_json::{Map, Value, json};

use super::harness::{HarnessArgs, Prepared};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  herald env --env-dir environments/development
  herald env --env-dir environments/production --json --show-secrets | jq .

Prints only the variables the directories set, as NAME=value lines, then the /export metadata.
Values of names containing PASSWORD, SECRET, TOKEN, KEY or CREDENTIAL (or a part PASS, PASSWD,
PWD, PW, PASSPHRASE, AUTH), and inside values the passwords of URLs, secret DSN and query
parameters (password=, access_token=, …) and Bearer/Basic credentials, are masked unless
--show-secrets.")]
pub struct EnvArgs {
    #[command(flatten)]
    pub harness: HarnessArgs,
    /// Print one JSON object: {"environment": {NAME: value}, "export": {NAME: value}}.
    #[arg(long)]
    pub json: bool,
    /// Print values as they are.
    #[arg(long)]
    pub show_secrets: bool,
}

pub async fn run(args: EnvArgs) -> anyhow::Result<()> {
    let prepared = args.harness.prepare().await?;
    print(&prepared, args.json, args.show_secrets)
}

pub fn print(prepared: &Prepared, as_json: bool, show_secrets: bool) -> anyhow::Result<()> {
    let shown = |name: &str, value: &str| -> String {
        if show_secrets {
            value.to_owned()
        } else {
            mask(name, value).into_owned()
        }
    };
    let vars = prepared
        .resolved
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let export = prepared
        .export
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let mut out = String::new();
    if as_json {
        let object = |pairs: &mut dyn Iterator<Item = (&str, &str)>| -> Map<String, Value> {
            pairs
                .map(|(k, v)| (k.to_owned(), Value::String(shown(k, v))))
                .collect()
        };
        out = json!({
            "environment": object(&mut vars.clone()),
            "export": object(&mut export.clone()),
        })
        .to_string();
        out.push('\n');
    } else {
        let line = |out: &mut String, k: &str, v: &str| {
            // One variable per line: newlines inside a value are shown as \n.
            out.push_str(&format!("{k}={}\n", shown(k, v).replace('\n', "\\n")));
        };
        for (k, v) in vars {
            line(&mut out, k, v);
        }
        if !prepared.export.is_empty() {
            out.push_str("# /export metadata\n");
            for (k, v) in export {
                line(&mut out, k, v);
            }
        }
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("cannot write to stdout")
}
