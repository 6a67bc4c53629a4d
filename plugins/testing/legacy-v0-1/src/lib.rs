//! `legacy-v0-1`: a test-only plugin built for the frozen
//! `broadcast:plugin@0.1.0` contract (`plugins/wit/v0.1.0/plugin.wit`),
//! with `wit-bindgen` directly rather than the SDK (which follows the
//! current contract), so that the router's tests load a real 0.1.0
//! component and check it keeps working.
//!
//! It implements `select-targets` (every pod except the addresses in the
//! config's `skip`) and 0.1.0's per-pod `transform`, which sets on each
//! pod's copy:
//!
//! - `x-legacy-target`: the pod's `ip:port`;
//! - `x-legacy-call`: how many `transform` calls this instance has had,
//!   this one included (0.1.0 is called once per pod);
//! - `x-legacy-echo`: with `echo_header` in the config, that header's value
//!   in the copy it was given (`-` when absent).

#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::cell::{Cell, RefCell};

/// The bindings of the 0.1.0 world, and its exports.
#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.1.0",
        world: "plugin",
    });

    use super::Legacy;
    export!(Legacy);
}

use bindings::broadcast::plugin::types::{
    Header, Hooks, Outcome, Request, RequestHead, RequestPatch, Target, Verdict,
};

/// The plugin's config, as `init` parsed it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Config {
    /// Pod addresses `select-targets` leaves out.
    pub skip: Vec<String>,
    /// A request header whose value `transform` copies to `x-legacy-echo`.
    pub echo_header: Option<String>,
}

impl Config {
    /// Parses the route's config (JSON text; empty means `{}`).
    pub fn parse(text: &str) -> Result<Config, String> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| format!("invalid config: {error}"))?;
        let object = value.as_object().ok_or("invalid config: not a table")?;
        let mut config = Config::default();
        for (key, value) in object {
            match (key.as_str(), value) {
                ("skip", serde_json::Value::Array(addresses)) => {
                    for address in addresses {
                        let address = address
                            .as_str()
                            .ok_or("invalid config: `skip` lists addresses as text")?;
                        config.skip.push(address.to_owned());
                    }
                }
                ("echo_header", serde_json::Value::String(name)) => {
                    config.echo_header = Some(name.to_ascii_lowercase());
                }
                _ => return Err(format!("invalid config: unexpected `{key}`")),
            }
        }
        Ok(config)
    }
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

fn config() -> Result<Config, String> {
    CONFIG.with(|config| config.borrow().clone().ok_or("init was not called".into()))
}

/// `ip:port`, with an IPv6 address in brackets.
fn authority(target: &Target) -> String {
    if target.address.contains(':') {
        format!("[{}]:{}", target.address, target.port)
    } else {
        format!("{}:{}", target.address, target.port)
    }
}

/// The positions of the pods not in `skip`.
pub fn kept(config: &Config, addresses: &[&str]) -> Vec<u32> {
    (0..)
        .zip(addresses)
        .filter(|(_, address)| !config.skip.iter().any(|skip| skip == *address))
        .map(|(position, _)| position)
        .collect()
}

/// The plugin's exports.
pub struct Legacy;

impl bindings::Guest for Legacy {
    fn hooks() -> Hooks {
        Hooks::SELECT_TARGETS | Hooks::TRANSFORM
    }

    fn init(text: String) -> Result<(), String> {
        let parsed = Config::parse(&text)?;
        CONFIG.with(|config| *config.borrow_mut() = Some(parsed));
        Ok(())
    }

    fn select_targets(_head: RequestHead, targets: Vec<Target>) -> Result<Vec<u32>, String> {
        let addresses: Vec<&str> = targets.iter().map(|target| &*target.address).collect();
        Ok(kept(&config()?, &addresses))
    }

    fn transform(request: Request, target: Target) -> Result<RequestPatch, String> {
        let config = config()?;
        let call = CALLS.with(|calls| {
            calls.set(calls.get() + 1);
            calls.get()
        });
        let mut set_headers = vec![
            Header {
                name: "x-legacy-target".into(),
                value: authority(&target),
            },
            Header {
                name: "x-legacy-call".into(),
                value: call.to_string(),
            },
        ];
        if let Some(name) = &config.echo_header {
            let seen = request
                .head
                .headers
                .iter()
                .find(|header| header.name == *name)
                .map_or("-", |header| &header.value);
            set_headers.push(Header {
                name: "x-legacy-echo".into(),
                value: seen.to_owned(),
            });
        }
        Ok(RequestPatch {
            set_headers,
            remove_headers: Vec::new(),
            path: None,
            body: None,
        })
    }

    fn aggregate(_head: RequestHead, _outcomes: Vec<Outcome>) -> Result<Verdict, String> {
        Err("legacy-v0-1 does not aggregate".into())
    }
}

#[cfg(test)]
mod tests {
    use super::bindings::Guest;
    use super::*;

    #[test]
    fn config_and_selection() {
        let config = Config::parse(r#"{"skip": ["10.0.0.2"], "echo_header": "X-Tag"}"#).unwrap();
        assert_eq!(config.echo_header.as_deref(), Some("x-tag"));
        assert_eq!(kept(&config, &["10.0.0.1", "10.0.0.2", "10.0.0.3"]), [0, 2]);
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert!(Config::parse(r#"{"skipp": []}"#).is_err());
        assert!(Config::parse(r#"{"skip": [1]}"#).is_err());
    }

    #[test]
    fn each_call_stamps_its_pod_and_number() {
        Legacy::init(r#"{"echo_header": "x-tag"}"#.into()).unwrap();
        let request = |tag: &str| Request {
            head: RequestHead {
                broadcast_id: "b".into(),
                route: "r".into(),
                method: "POST".into(),
                path: "/".into(),
                headers: vec![Header {
                    name: "x-tag".into(),
                    value: tag.into(),
                }],
            },
            body: Vec::new(),
        };
        let target = |address: &str| Target {
            address: address.into(),
            port: 80,
            service: None,
            index: 0,
            labels: Vec::new(),
        };
        let value = |patch: &RequestPatch, name: &str| {
            let header = patch.set_headers.iter().find(|h| h.name == name);
            header.map(|header| header.value.clone()).unwrap()
        };
        let first = Legacy::transform(request("a"), target("10.0.0.1")).unwrap();
        let second = Legacy::transform(request("b"), target("fd00::5")).unwrap();
        assert_eq!(value(&first, "x-legacy-target"), "10.0.0.1:80");
        assert_eq!(value(&second, "x-legacy-target"), "[fd00::5]:80");
        assert_eq!(value(&first, "x-legacy-call"), "1");
        assert_eq!(value(&second, "x-legacy-call"), "2");
        assert_eq!(value(&second, "x-legacy-echo"), "b");
    }
}
