//! The worker's view of accounts: each configured account with what `GET /tokens/self`
//! returned about its token, and the authorization step of the pipeline (account known, scope held,
//! service covered) that runs before any Fastly request.

use std::collections::BTreeMap;

use chrono::Utc;

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Account, TelemetrySettings};
use crate::fastly::TokenInfo;
use crate::gateway::Gateway;
use crate::job::{ErrorCode, Job, Rejection};
use crate::limits::BudgetClass;

/// An account and, once Fastly returned them, its token's scopes, services and expiry.
#[derive(Debug, Clone)]
pub struct AccountEntry {
    pub account: Account,
    /// None when tokens/self could not be read; Fastly then decides on every request.
    pub token: Option<TokenInfo>,
}

/// Every account the worker can act for.
#[derive(Debug, Clone)]
pub struct AccountRegistry {
    entries: BTreeMap<String, AccountEntry>,
}

impl AccountRegistry {
    /// Reads tokens/self for every account. A token that cannot be read is logged and left
    /// unchecked rather than stopping the worker.
    pub async fn load(
        gateway: &Gateway,
        accounts: &BTreeMap<String, Account>,
        timeout: Duration,
        warning_days: u32,
    ) -> AccountRegistry {
        let mut entries = BTreeMap::new();
        for (name, account) in accounts {
            let token = check_token(gateway, account, timeout, warning_days, true).await;
            entries.insert(
                name.clone(),
                AccountEntry {
                    account: account.clone(),
                    token,
                },
            );
        }
        AccountRegistry { entries }
    }

    /// Builds a registry from known token information, for tests and the check command.
    pub fn from_entries(entries: impl IntoIterator<Item = AccountEntry>) -> AccountRegistry {
        AccountRegistry {
            entries: entries
                .into_iter()
                .map(|entry| (entry.account.name().to_owned(), entry))
                .collect(),
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &AccountEntry> {
        self.entries.values()
    }

    /// Finds the job's account and checks that its token may do the job.
    pub fn authorize(&self, job: &Job) -> Result<&AccountEntry, Rejection> {
        let entry = self.entries.get(&job.account).ok_or_else(|| {
            let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
            Rejection::new(
                ErrorCode::UnknownAccount,
                format!(
                    "account {:?} is not configured; use one of: {}",
                    job.account,
                    known.join(", ")
                ),
            )
        })?;
        let Some(token) = &entry.token else {
            return Ok(entry);
        };

        let job_type = job.kind.job_type();
        let allowed = job_type.allowed_scopes();
        if !token.has_any_scope(allowed) {
            return Err(Rejection::new(
                ErrorCode::MissingScope,
                format!(
                    "the token of account {:?} lacks the scope {:?} ({} jobs need one of: {}; \
                     the token has: {}); create a token with that scope",
                    job.account,
                    allowed[0],
                    job_type,
                    allowed.join(", "),
                    token.scopes.join(" ")
                ),
            ));
        }
        if let Some(service_id) = job.kind.service_id()
            && !token.covers_service(service_id.as_str())
        {
            return Err(Rejection::new(
                ErrorCode::ServiceNotAllowed,
                format!(
                    "the token of account {:?} is limited to other services and cannot act \
                         on service {service_id}",
                    job.account
                ),
            ));
        }
        Ok(entry)
    }
}

/// Reads an account's token from tokens/self, records its expiry and validity, and logs what
/// an operator must know: scopes at start, an expired or rejected token, an expiry within
/// `warning_days`. Returns the token information when Fastly gave it.
async fn check_token(
    gateway: &Gateway,
    account: &Account,
    timeout: Duration,
    warning_days: u32,
    at_start: bool,
) -> Option<TokenInfo> {
    let name = account.name();
    let deadline = Instant::now() + timeout;
    let called = gateway
        .call(
            account,
            BudgetClass::Read,
            "tokens_self",
            deadline,
            None,
            || gateway.client().token_self(account),
        )
        .await;
    let value = match called.result {
        Ok(value) => value,
        Err(err) => {
            // Fastly rejecting the token itself is a problem for readiness; anything else
            // (a network fault, an outage) leaves the token as it was.
            if matches!(err.http_status(), Some(401 | 403)) {
                gateway
                    .metrics()
                    .token_status(name, None, Some("is rejected by Fastly"));
                tracing::error!(account = name, error = %err, "Fastly rejects the account's token; its jobs will fail until it is replaced");
            } else {
                tracing::warn!(account = name, error = %err, "cannot read the token's scopes; Fastly will decide on each request");
            }
            return None;
        }
    };
    let info = match TokenInfo::from_json(&value) {
        Ok(info) => info,
        Err(reason) => {
            tracing::warn!(
                account = name,
                reason,
                "cannot read the token's scopes; Fastly will decide on each request"
            );
            return None;
        }
    };

    let now = Utc::now();
    let expires = info.expires_at.map(|at| at.timestamp());
    let expiry = info
        .expires_at
        .map(|at| at.to_rfc3339())
        .unwrap_or_else(|| "never".to_owned());
    if info.is_expired(now) {
        gateway
            .metrics()
            .token_status(name, expires, Some("has expired"));
        tracing::error!(account = name, expires_at = %expiry, "the account's Fastly token has expired; every request will fail until it is replaced");
        return Some(info);
    }
    gateway.metrics().token_status(name, expires, None);
    let soon = info
        .expires_at
        .is_some_and(|at| at - now < chrono::Duration::days(i64::from(warning_days)));
    if soon {
        tracing::warn!(
            account = name,
            expires_at = %expiry,
            "the account's Fastly token expires soon; create a new one in Fastly and update the worker's secret"
        );
    } else if at_start {
        tracing::info!(
            account = name,
            scopes = %info.scopes.join(" "),
            services = info.services.len(),
            expires_at = %expiry,
            "read the account's token scopes"
        );
    }
    Some(info)
}

/// Minimum time between two token checks that a 401 response brings forward, so that a stream
/// of failing jobs costs at most one tokens/self request a minute per account.
const EARLY_CHECK_SPACING: Duration = Duration::from_secs(60);

/// Checks every token again at the configured interval, for expiry and revocation, until the
/// task is aborted. A 401 response from Fastly to any request brings the next check forward, so
/// a revoked token shows in `/readyz` and `token_valid` within seconds, not at the next
/// interval. Scopes read at start stay in force; a changed token needs a restart.
pub async fn check_tokens_periodically(
    gateway: std::sync::Arc<Gateway>,
    accounts: BTreeMap<String, Account>,
    settings: TelemetrySettings,
    timeout: Duration,
) {
    let interval = Duration::from_secs(settings.token_check_interval_s);
    let mut early_check_at = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = gateway.unauthorized() => {
                tokio::time::sleep_until(early_check_at).await;
                early_check_at = Instant::now() + EARLY_CHECK_SPACING;
                tracing::info!("Fastly responded to a request with 401, checking the tokens now");
            }
        }
        for account in accounts.values() {
            check_token(
                &gateway,
                account,
                timeout,
                settings.token_expiry_warning_days,
                false,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::job::{JobKind, ServiceId};

    fn entry(name: &str, scopes: &[&str], services: &[&str]) -> AccountEntry {
        AccountEntry {
            account: Account::new(name, SecretString::from("t".to_owned())).unwrap(),
            token: Some(TokenInfo {
                id: None,
                name: None,
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                services: services.iter().map(|s| s.to_string()).collect(),
                expires_at: None,
            }),
        }
    }

    fn job(account: &str, kind: JobKind) -> Job {
        Job {
            id: "j".to_owned(),
            account: account.to_owned(),
            kind,
        }
    }

    fn purge_all(service: &str) -> JobKind {
        JobKind::PurgeAll {
            service_id: ServiceId::parse(service).unwrap(),
        }
    }

    #[test]
    fn unknown_account_rejected_with_known_names() {
        let registry = AccountRegistry::from_entries([entry("default", &["global"], &[])]);
        let rejection = registry
            .authorize(&job("shop", JobKind::GetToken))
            .unwrap_err();
        assert_eq!(rejection.code, ErrorCode::UnknownAccount);
        assert!(rejection.message.contains("\"shop\""));
        assert!(rejection.message.contains("default"));
    }

    #[test]
    fn missing_scope_named() {
        let registry = AccountRegistry::from_entries([entry("default", &["purge_select"], &[])]);
        let rejection = registry
            .authorize(&job("default", purge_all("abc")))
            .unwrap_err();
        assert_eq!(rejection.code, ErrorCode::MissingScope);
        assert!(
            rejection.message.contains("\"purge_all\""),
            "{}",
            rejection.message
        );

        let read = registry
            .authorize(&job("default", JobKind::GetToken))
            .unwrap_err();
        assert!(read.message.contains("global:read"), "{}", read.message);
    }

    #[test]
    fn any_allowed_scope_suffices() {
        let registry = AccountRegistry::from_entries([
            entry("a", &["global:read", "purge_all"], &[]),
            entry("b", &["global"], &[]),
        ]);
        assert!(registry.authorize(&job("a", purge_all("abc"))).is_ok());
        assert!(registry.authorize(&job("a", JobKind::GetAccount)).is_ok());
        assert!(registry.authorize(&job("b", purge_all("abc"))).is_ok());
    }

    #[test]
    fn service_restriction_enforced() {
        let registry = AccountRegistry::from_entries([entry("default", &["global"], &["abc"])]);
        assert!(
            registry
                .authorize(&job("default", purge_all("abc")))
                .is_ok()
        );
        let rejection = registry
            .authorize(&job("default", purge_all("xyz")))
            .unwrap_err();
        assert_eq!(rejection.code, ErrorCode::ServiceNotAllowed);
    }

    #[test]
    fn unknown_token_lets_fastly_decide() {
        let mut unchecked = entry("default", &[], &[]);
        unchecked.token = None;
        let registry = AccountRegistry::from_entries([unchecked]);
        assert!(
            registry
                .authorize(&job("default", purge_all("abc")))
                .is_ok()
        );
    }
}
