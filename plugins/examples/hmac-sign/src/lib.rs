//! `hmac-sign`: signs every pod's copy of the request, so that pods can
//! check it came through the router and was not altered.
//!
//! For each pod the plugin optionally merges fields into a JSON object body
//! (fixed `add_fields`, and the pod's own `"target": "ip:port"` with
//! `add_target`), then sets a header (`x-broadcast-signature` by default) to
//! `sha256=<hex>`: the HMAC-SHA256, keyed with the configured secret, of the
//! broadcast id, a newline, and the body the pod receives. See README.md for
//! how a receiver verifies it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use broadcast_plugin_sdk::{Hooks, Plugin, Request, RequestPatch, Target};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// The plugin's config, as written in the route's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HMAC key shared with the pods.
    pub secret: String,
    /// The header that carries the signature.
    #[serde(default = "default_header")]
    pub header: String,
    /// Fields merged into the JSON object body (replacing same-named ones).
    #[serde(default)]
    pub add_fields: Map<String, Value>,
    /// Also merge `"target": "ip:port"`, the pod the copy goes to.
    #[serde(default)]
    pub add_target: bool,
}

fn default_header() -> String {
    "x-broadcast-signature".into()
}

/// The plugin: its checked config.
#[derive(Debug)]
pub struct HmacSign {
    secret: Vec<u8>,
    header: String,
    add_fields: Map<String, Value>,
    add_target: bool,
}

impl Plugin for HmacSign {
    type Config = Config;
    const HOOKS: Hooks = Hooks::TRANSFORM;

    fn new(config: Config) -> Result<Self, String> {
        if config.secret.is_empty() {
            return Err("secret must not be empty".into());
        }
        let header = config.header.trim().to_ascii_lowercase();
        let valid_name = !header.is_empty()
            && header
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
        if !valid_name {
            return Err(format!(
                "header `{}` is not a valid header name",
                config.header
            ));
        }
        Ok(HmacSign {
            secret: config.secret.into_bytes(),
            header,
            add_fields: config.add_fields,
            add_target: config.add_target,
        })
    }

    /// Parses the body and merges `add_fields` once for all `targets`;
    /// without `add_target` every pod gets the same patch (so the pods
    /// keep sharing one copy), with it each pod its own body and signature.
    fn transform(
        &self,
        request: &Request,
        targets: &[Target],
    ) -> Result<Vec<RequestPatch>, String> {
        let id = &request.head.broadcast_id;
        if self.add_fields.is_empty() && !self.add_target {
            let signature = sign(&self.secret, id, &request.body);
            let patch = RequestPatch::new().set_header(&self.header, signature);
            return Ok(vec![patch; targets.len()]);
        }
        let mut object = self.merge(&request.body)?;
        let mut base = RequestPatch::new();
        if request.body.is_empty() {
            base = base.set_header("content-type", "application/json");
        }
        let signed = |object: &Map<String, Value>| -> Result<RequestPatch, String> {
            let body = serde_json::to_vec(object).map_err(|error| error.to_string())?;
            let signature = sign(&self.secret, id, &body);
            Ok(base
                .clone()
                .with_body(body)
                .set_header(&self.header, signature))
        };
        if !self.add_target {
            return Ok(vec![signed(&object)?; targets.len()]);
        }
        targets
            .iter()
            .map(|target| {
                object.insert("target".into(), Value::String(target.authority()));
                signed(&object)
            })
            .collect()
    }
}

impl HmacSign {
    /// The body as a JSON object with `add_fields` merged in; an empty
    /// body counts as `{}`.
    fn merge(&self, body: &[u8]) -> Result<Map<String, Value>, String> {
        let mut object = if body.is_empty() {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(object)) => object,
                Ok(_) => {
                    return Err(
                        "hmac-sign: fields must be added but the body is JSON, not a \
                                JSON object"
                            .into(),
                    );
                }
                Err(error) => {
                    return Err(format!(
                        "hmac-sign: fields must be added but the body is not JSON: {error}"
                    ));
                }
            }
        };
        for (name, value) in &self.add_fields {
            object.insert(name.clone(), value.clone());
        }
        Ok(object)
    }
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `broadcast_id`, `\n`,
/// `body`, keyed with `secret`.
pub fn sign(secret: &[u8], broadcast_id: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(broadcast_id.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(7 + 2 * digest.len());
    text.push_str("sha256=");
    for byte in digest.iter() {
        text.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    text
}

broadcast_plugin_sdk::export_plugin!(HmacSign);

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_plugin_sdk::{Header, instantiate, testing};

    fn plugin(config: &str) -> HmacSign {
        instantiate::<HmacSign>(config).unwrap()
    }

    fn header<'a>(patch: &'a RequestPatch, name: &str) -> Option<&'a str> {
        patch
            .set_headers
            .iter()
            .find(|header| header.name == name)
            .map(|header| header.value.as_str())
    }

    #[test]
    fn the_signature_matches_a_known_vector() {
        // Checked with: printf 'b-1\n{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            sign(b"s3cret", "b-1", br#"{"a":1}"#),
            "sha256=2a85ff22855649e6192812ea688c0504b0c5ed23d25ed6c81dd5b4bb91f239b6"
        );
    }

    #[test]
    fn an_unchanged_body_is_signed_as_is() {
        let signer = plugin(r#"{"secret": "s3cret"}"#);
        let request = testing::request("b-1", br#"{"a":1}"#);
        let target = testing::target(0, "10.0.0.1", 8080);
        let patches = signer
            .transform(
                &request,
                &[target.clone(), testing::target(1, "10.0.0.2", 8080)],
            )
            .unwrap();
        assert_eq!(patches.len(), 2);
        assert_eq!(patches[0], patches[1], "one body, one signature for all");
        let patch = &patches[0];
        assert_eq!(patch.body, None);
        assert_eq!(patch.set_headers.len(), 1);
        assert_eq!(
            header(patch, "x-broadcast-signature"),
            Some(sign(b"s3cret", "b-1", br#"{"a":1}"#).as_str())
        );
        // Any body can be signed when nothing is merged, even a non-JSON one.
        let raw = signer
            .transform(&testing::request("b-1", b"\x00\x01"), &[target])
            .unwrap();
        assert_eq!(
            header(&raw[0], "x-broadcast-signature"),
            Some(sign(b"s3cret", "b-1", b"\x00\x01").as_str())
        );
    }

    #[test]
    fn merged_fields_are_signed_per_pod() {
        let signer = plugin(
            r#"{"secret": "k", "header": "X-Sig", "add_fields": {"source": "router", "a": 2}, "add_target": true}"#,
        );
        let request = testing::request("b-7", br#"{"a":1,"b":[true]}"#);
        let targets = [
            testing::target(0, "10.0.0.1", 80),
            testing::target(1, "fd00::5", 80),
        ];
        let patches = signer.transform(&request, &targets).unwrap();
        let [first, second] = &patches[..] else {
            panic!("one patch per target: {patches:?}");
        };
        let body: Value = serde_json::from_slice(first.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"a": 2, "b": [true], "source": "router", "target": "10.0.0.1:80"})
        );
        let other: Value = serde_json::from_slice(second.body.as_ref().unwrap()).unwrap();
        assert_eq!(other["target"], "[fd00::5]:80");
        assert_eq!(
            header(first, "x-sig"),
            Some(sign(b"k", "b-7", first.body.as_ref().unwrap()).as_str())
        );
        assert_ne!(header(first, "x-sig"), header(second, "x-sig"));
        assert!(
            !first
                .set_headers
                .contains(&Header::new("content-type", "application/json"))
        );
    }

    #[test]
    fn an_empty_body_becomes_an_object() {
        let signer = plugin(r#"{"secret": "k", "add_target": true}"#);
        let patches = signer
            .transform(
                &testing::request("b", b""),
                &[testing::target(0, "10.0.0.1", 80)],
            )
            .unwrap();
        assert_eq!(
            patches[0].body.as_deref(),
            Some(&br#"{"target":"10.0.0.1:80"}"#[..])
        );
        assert_eq!(
            header(&patches[0], "content-type"),
            Some("application/json")
        );
    }

    #[test]
    fn fields_cannot_be_added_to_other_bodies() {
        let signer = plugin(r#"{"secret": "k", "add_fields": {"x": 1}}"#);
        let target = [testing::target(0, "10.0.0.1", 80)];
        let array = signer
            .transform(&testing::request("b", b"[1]"), &target)
            .unwrap_err();
        assert!(array.contains("not a JSON object"), "{array}");
        let text = signer
            .transform(&testing::request("b", b"hello"), &target)
            .unwrap_err();
        assert!(text.contains("is not JSON"), "{text}");
    }

    #[test]
    fn merged_fields_without_the_target_give_every_pod_one_patch() {
        let signer = plugin(r#"{"secret": "k", "add_fields": {"x": 1}}"#);
        let targets = testing::targets(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], 80);
        let patches = signer
            .transform(&testing::request("b", br#"{"a":1}"#), &targets)
            .unwrap();
        assert_eq!(patches.len(), 3);
        assert!(patches.iter().all(|patch| *patch == patches[0]));
        assert_eq!(patches[0].body.as_deref(), Some(&br#"{"a":1,"x":1}"#[..]));
        assert!(
            signer
                .transform(&testing::request("b", b""), &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_configs_are_rejected() {
        let error = |config| instantiate::<HmacSign>(config).unwrap_err();
        assert!(error("{}").contains("missing field `secret`"));
        assert_eq!(
            error(r#"{"secret": ""}"#),
            "invalid config: secret must not be empty"
        );
        assert!(
            error(r#"{"secret": "k", "header": "bad header"}"#).contains("not a valid header name")
        );
        assert!(error(r#"{"secret": "k", "add_fields": [1]}"#).contains("invalid type"));
    }
}
