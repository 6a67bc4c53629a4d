//! Bearer-token authentication for routes and the admin endpoints.
//!
//! Token sets (`[tokens.NAME]`) are read from a file or an environment
//! variable the configuration names, never from the configuration itself,
//! so the file can sit in a ConfigMap and the tokens in a Secret. Tokens
//! are kept only as SHA-256 digests and compared in constant time; they
//! are never logged. A set can hold several tokens, so a new one can be
//! rolled out before the old one is removed.
//!
//! A request without a usable `Authorization: Bearer` header, or with a
//! token no set knows, gets 401; a token that some set knows but the
//! route does not accept gets 403.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use crate::config::{Config, Problems, TokenSetConfig};

/// Shortest token accepted: anything shorter is too easy to guess.
pub const MIN_TOKEN_LENGTH: usize = 16;

type TokenDigest = [u8; 32];

/// Every token set of a configuration, as digests.
#[derive(Debug, Default)]
pub struct Tokens {
    sets: BTreeMap<String, Vec<TokenDigest>>,
}

impl Tokens {
    /// Reads every `[tokens.NAME]` set, reporting each set that cannot be
    /// read, is empty, or holds a token shorter than [`MIN_TOKEN_LENGTH`].
    pub fn load(config: &Config) -> Result<Self, Problems> {
        let mut sets = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, set) in &config.tokens {
            match read_set(set) {
                Ok(tokens) => {
                    sets.insert(name.clone(), tokens);
                }
                Err(message) => problems.push(
                    set.location
                        .problem(format!("token set \"{name}\": {message}")),
                ),
            }
        }
        if problems.is_empty() {
            Ok(Self { sets })
        } else {
            Err(Problems(problems))
        }
    }

    /// The guard for a route (or the admin port) accepting the sets
    /// `names`; no names: no authentication.
    pub fn guard(&self, names: &[String]) -> Guard {
        if names.is_empty() {
            return Guard::default();
        }
        let accepted: Vec<TokenDigest> = names
            .iter()
            .filter_map(|name| self.sets.get(name))
            .flatten()
            .copied()
            .collect();
        let known: Vec<TokenDigest> = self.sets.values().flatten().copied().collect();
        Guard {
            required: true,
            accepted: accepted.into(),
            known: known.into(),
        }
    }
}

fn read_set(set: &TokenSetConfig) -> Result<Vec<TokenDigest>, String> {
    let (text, from) = match (&set.file, &set.env) {
        (Some(path), _) => (
            std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?,
            format!("file {}", path.display()),
        ),
        (None, Some(variable)) => (
            std::env::var(variable)
                .map_err(|_| format!("the environment variable {variable} is not set"))?,
            format!("environment variable {variable}"),
        ),
        (None, None) => return Err("give `file` or `env`".to_owned()),
    };
    let tokens: Vec<&str> = if set.file.is_some() {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect()
    } else {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|token| !token.is_empty())
            .collect()
    };
    if tokens.is_empty() {
        return Err(format!("the {from} holds no token"));
    }
    if let Some(position) = tokens
        .iter()
        .position(|token| token.len() < MIN_TOKEN_LENGTH)
    {
        return Err(format!(
            "token {} of the {from} is shorter than {MIN_TOKEN_LENGTH} characters",
            position + 1
        ));
    }
    Ok(tokens.into_iter().map(digest).collect())
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `Authorization: Bearer <token>` header (401).
    #[error("this route needs an `Authorization: Bearer` token")]
    Missing,
    /// The token is not one the router knows (401).
    #[error("the bearer token is not valid")]
    Invalid,
    /// The token is valid, but not for this route (403).
    #[error("the bearer token is not allowed on this route")]
    NotAllowed,
}

/// What one route (or the admin port) requires of a request.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    required: bool,
    accepted: Arc<[TokenDigest]>,
    known: Arc<[TokenDigest]>,
}

impl Guard {
    /// Whether requests need a token at all.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Lets a request through when it needs no token or carries one the
    /// guard accepts.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if !self.required {
            return Ok(());
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(Denied::Missing)?;
        let presented = digest(token);
        if contains(&self.accepted, &presented) {
            Ok(())
        } else if contains(&self.known, &presented) {
            Err(Denied::NotAllowed)
        } else {
            Err(Denied::Invalid)
        }
    }
}

/// Whether `digests` holds `presented`, looking at every entry and every
/// byte whatever matches, so the time taken says nothing about the tokens.
fn contains(digests: &[TokenDigest], presented: &TokenDigest) -> bool {
    let mut found = 0u8;
    for candidate in digests {
        let difference = candidate
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        found |= u8::from(std::hint::black_box(difference) == 0);
    }
    found == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn tokens(sets: &[(&str, &[&str])]) -> Tokens {
        Tokens {
            sets: sets
                .iter()
                .map(|(name, tokens)| {
                    (name.to_string(), tokens.iter().map(|t| digest(t)).collect())
                })
                .collect(),
        }
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn missing_unknown_and_foreign_tokens_are_told_apart() {
        let tokens = tokens(&[
            ("ops", &["ops-token-0123456789", "ops-token-rotated-01"]),
            ("ci", &["ci-token-0123456789a"]),
        ]);
        let guard = tokens.guard(&["ops".to_owned()]);
        assert_eq!(guard.check(&HeaderMap::new()), Err(Denied::Missing));
        assert_eq!(guard.check(&bearer("Basic abc")), Err(Denied::Missing));
        assert_eq!(guard.check(&bearer("Bearer ")), Err(Denied::Missing));
        assert_eq!(
            guard.check(&bearer("Bearer nope-nope-nope-nope")),
            Err(Denied::Invalid)
        );
        assert_eq!(
            guard.check(&bearer("Bearer ci-token-0123456789a")),
            Err(Denied::NotAllowed)
        );
        assert_eq!(guard.check(&bearer("Bearer ops-token-0123456789")), Ok(()));
        assert_eq!(guard.check(&bearer("bearer ops-token-rotated-01")), Ok(()));
        assert_eq!(
            tokens.guard(&[]).check(&HeaderMap::new()),
            Ok(()),
            "no sets: open"
        );
    }
}
