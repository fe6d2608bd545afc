//! API token table: authentication of the `Fastly-Key` header, scope checks and the
//! `GET /tokens/self` reply.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};

use super::config::SimToken;
use super::ids::derive_id;
use super::model::timestamp;

/// Scope that a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read endpoints: `global:read` or `global`.
    Read,
    /// Surrogate-key and URL purges: `purge_select` or `global`.
    PurgeSelect,
    /// Purge everything of a service: `purge_all` or `global`.
    PurgeAll,
    /// Any valid token, e.g. `GET /tokens/self`.
    AnyToken,
}

impl Scope {
    /// Returns the scope name that grants access besides `global`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "global:read",
            Scope::PurgeSelect => "purge_select",
            Scope::PurgeAll => "purge_all",
            Scope::AnyToken => "global",
        }
    }
}

/// An accepted token with the fields that `GET /tokens/self` reports.
#[derive(Debug)]
pub struct TokenRecord {
    pub config: SimToken,
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl TokenRecord {
    pub fn user_id(&self) -> &str {
        &self.config.user_id
    }

    pub fn customer_id(&self) -> &str {
        &self.config.customer_id
    }

    pub fn grants(&self, scope: Scope) -> bool {
        if scope == Scope::AnyToken {
            return true;
        }
        self.config
            .scopes
            .iter()
            .any(|granted| granted == "global" || granted == scope.name())
    }

    /// Checks the token's service list. An empty list allows every service.
    pub fn allows_service(&self, service_id: &str) -> bool {
        self.config.services.is_empty() || self.config.services.iter().any(|id| id == service_id)
    }

    /// Returns the `GET /tokens/self` body, which never contains the token value.
    pub fn self_json(
        &self,
        now: DateTime<Utc>,
        ip: Option<String>,
        user_agent: Option<&str>,
    ) -> Value {
        json!({
            "id": self.id,
            "user_id": self.config.user_id,
            "customer_id": self.config.customer_id,
            "name": self.name,
            "last_used_at": timestamp(now),
            "created_at": timestamp(self.created_at),
            "expires_at": self.config.expires_at.map(timestamp),
            "ip": ip,
            "user_agent": user_agent,
            "sudo_expires_at": null,
            "scopes": self.config.scopes,
            "scope": self.config.scopes.join(" "),
            "services": self.config.services,
            "service_id": self.config.services.first(),
        })
    }
}

/// Result of looking up a `Fastly-Key` value.
#[derive(Debug)]
pub enum Authentication {
    Valid(Arc<TokenRecord>),
    /// The header is missing, the token is unknown or it has expired.
    Invalid,
}

/// Accepted tokens by their `Fastly-Key` value.
#[derive(Debug, Default)]
pub struct TokenTable {
    by_value: HashMap<String, Arc<TokenRecord>>,
}

impl TokenTable {
    pub fn new(tokens: &[SimToken]) -> Self {
        let first_created = Utc
            .with_ymd_and_hms(2023, 6, 1, 8, 30, 0)
            .single()
            .expect("seed time is a valid UTC time");

        let by_value = tokens
            .iter()
            .enumerate()
            .map(|(index, token)| {
                let record = TokenRecord {
                    config: token.clone(),
                    id: derive_id("token", index as u64),
                    name: format!("sim-token-{}", index + 1),
                    created_at: first_created + TimeDelta::days(index as i64),
                };
                (token.token.clone(), Arc::new(record))
            })
            .collect();
        Self { by_value }
    }

    pub fn authenticate(&self, fastly_key: Option<&str>, now: DateTime<Utc>) -> Authentication {
        let Some(record) = fastly_key.and_then(|key| self.by_value.get(key)) else {
            return Authentication::Invalid;
        };
        if record.config.expires_at.is_some_and(|expiry| expiry <= now) {
            return Authentication::Invalid;
        }
        Authentication::Valid(Arc::clone(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules_match_fastly() {
        let table = TokenTable::new(&[
            SimToken::with_scopes("read-purge", &["global:read", "purge_select"]),
            SimToken::global("global"),
        ]);
        let now = Utc::now();
        let Authentication::Valid(limited) = table.authenticate(Some("read-purge"), now) else {
            panic!("read-purge token must authenticate");
        };
        let Authentication::Valid(global) = table.authenticate(Some("global"), now) else {
            panic!("global token must authenticate");
        };

        assert!(limited.grants(Scope::Read));
        assert!(limited.grants(Scope::PurgeSelect));
        assert!(limited.grants(Scope::AnyToken));
        assert!(!limited.grants(Scope::PurgeAll));
        assert!(global.grants(Scope::PurgeAll));
        assert!(global.grants(Scope::Read));
    }

    #[test]
    fn expired_and_unknown_tokens_are_invalid() {
        let mut expired = SimToken::global("old");
        expired.expires_at = Some(Utc::now() - TimeDelta::seconds(1));
        let table = TokenTable::new(&[expired]);

        assert!(matches!(
            table.authenticate(Some("old"), Utc::now()),
            Authentication::Invalid
        ));
        assert!(matches!(
            table.authenticate(Some("other"), Utc::now()),
            Authentication::Invalid
        ));
        assert!(matches!(
            table.authenticate(None, Utc::now()),
            Authentication::Invalid
        ));
    }
}
