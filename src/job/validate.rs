//! Validate: an [`Envelope`] to a [`Job`] whose every field is checked, or a [`Rejection`]
//! that names the field, the value and what is wrong with it. Nothing here calls Fastly.

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Value};
use url::{Host, Url};

use super::decode::{Envelope, json_kind, usable_id};
use super::{ErrorCode, Job, JobKind, JobType, Rejection};
use crate::config::JobLimits;

/// Maximum surrogate key length in bytes; Fastly rejects purges of longer keys.
pub const MAX_KEY_BYTES: usize = 1024;
/// Maximum length of a service id. Fastly's ids are 22 characters; the cap only keeps
/// request paths short.
pub const MAX_SERVICE_ID_BYTES: usize = 64;
/// Maximum URL length in bytes.
// NOTE: an estimate. Fastly documents 8 KB for a request's URL; the purge API limit is unverified.
pub const MAX_URL_BYTES: usize = 8192;
/// Largest `per_page` accepted for list_services.
// NOTE: Fastly documents no maximum page size; 200 was accepted in recordings.
pub const MAX_PER_PAGE: u32 = 1000;

/// A Fastly service id: ASCII letters and digits only, so it is safe in a request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

impl ServiceId {
    pub fn parse(value: &str) -> Result<ServiceId, String> {
        if value.is_empty() {
            return Err("is empty".to_owned());
        }
        if value.len() > MAX_SERVICE_ID_BYTES {
            return Err(format!(
                "is {} bytes long, more than {MAX_SERVICE_ID_BYTES}",
                value.len()
            ));
        }
        if let Some(bad) = value.chars().find(|c| !c.is_ascii_alphanumeric()) {
            return Err(format!(
                "contains {bad:?}; service ids contain only letters and digits"
            ));
        }
        Ok(ServiceId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URL to purge: the URL as the job gave it, and its parts as Fastly's URL purge takes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PurgeUrl {
    /// The URL exactly as in the job; results use it as the key of its purge id.
    pub original: String,
    /// The host, lowercased (IDNA domains in their ASCII form), with the port when it is not
    /// the scheme's default.
    pub host: String,
    /// The path and query: percent-encoding kept, non-ASCII characters percent-encoded as
    /// UTF-8, dot segments resolved, the fragment dropped. Starts with '/'.
    pub path_and_query: String,
}

impl PurgeUrl {
    pub fn parse(value: &str) -> Result<PurgeUrl, String> {
        if value.len() > MAX_URL_BYTES {
            return Err(format!(
                "is {} bytes long, more than {MAX_URL_BYTES}",
                value.len()
            ));
        }
        // The URL parser silently drops tabs and line breaks, so check the raw text first.
        if let Some(bad) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "contains the character {bad:?}; percent-encode spaces and control characters"
            ));
        }
        let url = Url::parse(value).map_err(|err| format!("is not an absolute URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "has the scheme {:?}; only http and https URLs can be purged",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "contains a user name or password; remove the credentials from the URL".to_owned(),
            );
        }
        let host = url.host_str().unwrap_or_default();
        if let Some(Host::Domain(domain)) = url.host() {
            // A host of dots or with empty labels would become a dot segment of the API path.
            if domain.split('.').any(str::is_empty) {
                return Err(format!(
                    "has the invalid host {domain:?}; a host name has no empty labels"
                ));
            }
            // The URL parser decodes percent escapes in the host, so "%7b" arrives here as '{',
            // which the HTTP client would encode again and so change the API path.
            if let Some(bad) = domain
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err(format!(
                    "has the host {domain:?} with the character {bad:?}; a host name contains \
                     only letters, digits, '-', '_' and '.'"
                ));
            }
        }

        let mut host_port = host.to_owned();
        if let Some(port) = url.port() {
            host_port.push(':');
            host_port.push_str(&port.to_string());
        }
        let mut path_and_query = url.path().to_owned();
        if let Some(query) = url.query() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Ok(PurgeUrl {
            original: value.to_owned(),
            host: host_port,
            path_and_query,
        })
    }
}

/// Validates an envelope as a job of its type.
pub fn validate(envelope: &Envelope, limits: &JobLimits) -> Result<Job, Rejection> {
    let fields = Fields(&envelope.fields);
    if let Some(id) = fields.0.get("id") {
        match id.as_str() {
            Some(id) if usable_id(id) => {}
            _ => {
                return Err(invalid(
                    "id",
                    "must be a string of 1 to 255 bytes without control characters",
                    id,
                ));
            }
        }
    }
    if let Some(account) = fields.0.get("account")
        && !account.is_string()
    {
        return Err(invalid(
            "account",
            "must be a string naming a configured account",
            account,
        ));
    }

    let job_type = match fields.0.get("type") {
        None => {
            return Err(Rejection::new(
                ErrorCode::MissingField,
                format!(
                    "the job has no \"type\" field; set it to one of {}",
                    type_list()
                ),
            ));
        }
        Some(Value::String(name)) => JobType::parse(name).ok_or_else(|| {
            Rejection::new(
                ErrorCode::UnknownType,
                format!("unknown job type {name:?}; expected one of {}", type_list()),
            )
        })?,
        Some(other) => {
            return Err(invalid(
                "type",
                &format!("must be a string, one of {}", type_list()),
                other,
            ));
        }
    };

    let kind = match job_type {
        JobType::PurgeKeys => JobKind::PurgeKeys {
            service_id: fields.service_id()?,
            keys: fields.keys(limits.max_keys)?,
            soft: fields.optional_bool("soft")?.unwrap_or(false),
        },
        JobType::PurgeUrls => JobKind::PurgeUrls {
            urls: fields.urls(limits.max_urls)?,
            soft: fields.optional_bool("soft")?.unwrap_or(false),
        },
        JobType::PurgeAll => {
            if fields.optional_bool("soft")? == Some(true) {
                return Err(Rejection::new(
                    ErrorCode::InvalidField,
                    "field \"soft\": Fastly has no soft purge_all; send purge_all without \
                     \"soft\", or soft-purge a surrogate key that every object carries",
                ));
            }
            JobKind::PurgeAll {
                service_id: fields.service_id()?,
            }
        }
        JobType::ListServices => JobKind::ListServices {
            page: fields.optional_count("page", u32::MAX)?,
            per_page: fields.optional_count("per_page", MAX_PER_PAGE)?,
        },
        JobType::GetService => JobKind::GetService {
            service_id: fields.service_id()?,
        },
        JobType::GetAccount => JobKind::GetAccount,
        JobType::GetToken => JobKind::GetToken,
    };
    Ok(Job {
        id: envelope.job_id.clone(),
        account: envelope.account.clone(),
        kind,
    })
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn service_id(&self) -> Result<ServiceId, Rejection> {
        let value = self.required("service_id")?;
        let text = value
            .as_str()
            .ok_or_else(|| invalid("service_id", "must be a string", value))?;
        ServiceId::parse(text).map_err(|reason| {
            Rejection::new(
                ErrorCode::InvalidField,
                format!("field \"service_id\": {} {reason}", quote(text)),
            )
        })
    }

    fn keys(&self, max: usize) -> Result<Vec<String>, Rejection> {
        let items = self.string_array("keys", max)?;
        let mut seen = HashSet::with_capacity(items.len());
        let mut keys = Vec::with_capacity(items.len());
        for (index, key) in items.into_iter().enumerate() {
            check_key(key).map_err(|reason| {
                Rejection::new(
                    ErrorCode::InvalidField,
                    format!("field \"keys\", item {index}: {} {reason}", quote(key)),
                )
            })?;
            if seen.insert(key) {
                keys.push(key.to_owned());
            }
        }
        Ok(keys)
    }

    fn urls(&self, max: usize) -> Result<Vec<PurgeUrl>, Rejection> {
        let items = self.string_array("urls", max)?;
        let mut seen = HashSet::with_capacity(items.len());
        let mut urls = Vec::with_capacity(items.len());
        for (index, text) in items.into_iter().enumerate() {
            let url = PurgeUrl::parse(text).map_err(|reason| {
                Rejection::new(
                    ErrorCode::InvalidField,
                    format!("field \"urls\", item {index}: {} {reason}", quote(text)),
                )
            })?;
            if seen.insert(text) {
                urls.push(url);
            }
        }
        Ok(urls)
    }

    fn required(&self, name: &str) -> Result<&Value, Rejection> {
        match self.0.get(name) {
            None | Some(Value::Null) => Err(Rejection::new(
                ErrorCode::MissingField,
                format!("the job has no {name:?} field, which its type requires"),
            )),
            Some(value) => Ok(value),
        }
    }

    fn string_array(&self, name: &str, max: usize) -> Result<Vec<&str>, Rejection> {
        let value = self.required(name)?;
        let Value::Array(items) = value else {
            return Err(invalid(name, "must be an array of strings", value));
        };
        if items.is_empty() {
            return Err(Rejection::new(
                ErrorCode::InvalidField,
                format!("field {name:?} is an empty array; give at least one item"),
            ));
        }
        if items.len() > max {
            return Err(Rejection::new(
                ErrorCode::InvalidField,
                format!(
                    "field {name:?} has {} items, more than the limit of {max}; split the job",
                    items.len()
                ),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                item.as_str().ok_or_else(|| {
                    Rejection::new(
                        ErrorCode::InvalidField,
                        format!(
                            "field {name:?}, item {index} must be a string, but it is {}",
                            describe(item)
                        ),
                    )
                })
            })
            .collect()
    }

    fn optional_bool(&self, name: &str) -> Result<Option<bool>, Rejection> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(invalid(name, "must be true or false", other)),
        }
    }

    fn optional_count(&self, name: &str, max: u32) -> Result<Option<u32>, Rejection> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=u64::from(max)).contains(n))
                .map(|n| Some(n as u32))
                .ok_or_else(|| {
                    invalid(
                        name,
                        &format!("must be a whole number from 1 to {max}"),
                        value,
                    )
                }),
        }
    }
}

/// Checks a surrogate key: 1 to 1024 bytes of printable ASCII without spaces (0x21 to 0x7E),
/// because Fastly separates keys with spaces and rejects longer keys.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty".to_owned());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "is {} bytes long, more than Fastly's limit of {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if let Some(bad) = key.chars().find(|c| !matches!(c, '\x21'..='\x7e')) {
        return Err(format!(
            "contains {bad:?}; surrogate keys are printable ASCII without spaces (0x21 to 0x7E)"
        ));
    }
    Ok(())
}

fn invalid(name: &str, expected: &str, value: &Value) -> Rejection {
    Rejection::new(
        ErrorCode::InvalidField,
        format!("field \"{name}\" {expected}, but it is {}", describe(value)),
    )
}

/// Describes a JSON value for a message: its type and a short excerpt.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Array(_) | Value::Object(_) => json_kind(value).to_owned(),
        Value::String(text) => format!("the string {}", quote(text)),
        // Numbers and booleans as written in the JSON, unquoted: "a number 2.0".
        other => format!("{} {}", json_kind(other), truncate(&other.to_string())),
    }
}

/// Cuts a number or boolean's JSON text for a message; a long one can only be a number.
fn truncate(text: &str) -> String {
    const MAX_CHARS: usize = 100;
    if text.len() > MAX_CHARS {
        format!("{}... ({} characters)", &text[..MAX_CHARS], text.len())
    } else {
        text.to_owned()
    }
}

/// Quotes a value for a message, escaping control characters and cutting it at 100 characters.
fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 100;
    if text.chars().count() > MAX_CHARS {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head:?}... ({} bytes)", text.len())
    } else {
        format!("{text:?}")
    }
}

fn type_list() -> String {
    JobType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::job::{MessageMeta, decode};

    fn limits() -> JobLimits {
        JobLimits {
            max_message_bytes: 1 << 20,
            max_keys: 300,
            max_urls: 5,
        }
    }

    fn check(value: Value) -> Result<Job, Rejection> {
        let body = serde_json::to_vec(&value).unwrap();
        let envelope = decode(&body, &MessageMeta::default(), usize::MAX)?;
        validate(&envelope, &limits())
    }

    fn rejected(value: Value) -> Rejection {
        check(value).unwrap_err()
    }

    #[test]
    fn lengths_at_their_limits() {
        let id = "s".repeat(MAX_SERVICE_ID_BYTES);
        assert!(ServiceId::parse(&id).is_ok());
        assert!(ServiceId::parse(&format!("{id}s")).is_err());
        let prefix = "https://a.example/";
        let url = format!("{prefix}{}", "p".repeat(MAX_URL_BYTES - prefix.len()));
        assert!(PurgeUrl::parse(&url).is_ok());
        assert!(PurgeUrl::parse(&format!("{url}p")).is_err());
    }

    #[test]
    fn counts_at_their_limits_accepted() {
        let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        assert!(check(json!({"type":"purge_keys","service_id":"s1","keys":keys})).is_ok());
        let urls: Vec<String> = (0..5).map(|i| format!("https://a.example/{i}")).collect();
        assert!(check(json!({"type":"purge_urls","urls":urls})).is_ok());
    }

    #[test]
    fn purge_keys_valid_and_deduplicated() {
        let job = check(json!({"type":"purge_keys","service_id":"SU1Z0isxPaozGVKXdv0eY","keys":["a","b","a"],"soft":true})).unwrap();
        assert_eq!(
            job.kind,
            JobKind::PurgeKeys {
                service_id: ServiceId("SU1Z0isxPaozGVKXdv0eY".to_owned()),
                keys: vec!["a".to_owned(), "b".to_owned()],
                soft: true
            }
        );
    }

    #[test]
    fn service_id_rules() {
        let missing = rejected(json!({"type":"purge_all"}));
        assert_eq!(missing.code, ErrorCode::MissingField);
        assert!(missing.message.contains("service_id"));

        for bad in ["", "abc/def", "abc-1", "ab c", "é"] {
            let rejection = rejected(json!({"type":"purge_all","service_id":bad}));
            assert_eq!(rejection.code, ErrorCode::InvalidField, "{bad}");
            assert!(rejection.message.contains("service_id"), "{bad}");
        }
        let number = rejected(json!({"type":"get_service","service_id":42}));
        assert_eq!(number.code, ErrorCode::InvalidField);
        assert!(number.message.contains("a number"), "{}", number.message);
    }

    #[test]
    fn key_rules() {
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        for bad in [
            "",
            "a b",
            "tab\there",
            "new\nline",
            "caf\u{e9}",
            "del\u{7f}",
            long.as_str(),
        ] {
            let rejection = rejected(json!({"type":"purge_keys","service_id":"s1","keys":[bad]}));
            assert_eq!(rejection.code, ErrorCode::InvalidField, "{bad:?}");
            assert!(
                rejection.message.contains("item 0"),
                "{}",
                rejection.message
            );
        }
        let max = "k".repeat(MAX_KEY_BYTES);
        assert!(check(json!({"type":"purge_keys","service_id":"s1","keys":[max, "!~/%"]})).is_ok());
    }

    #[test]
    fn keys_must_be_nonempty_strings_within_limit() {
        let empty = rejected(json!({"type":"purge_keys","service_id":"s1","keys":[]}));
        assert_eq!(empty.code, ErrorCode::InvalidField);

        let not_array = rejected(json!({"type":"purge_keys","service_id":"s1","keys":"a b"}));
        assert_eq!(not_array.code, ErrorCode::InvalidField);

        let number_item = rejected(json!({"type":"purge_keys","service_id":"s1","keys":["a", 5]}));
        assert_eq!(number_item.code, ErrorCode::InvalidField);
        assert!(
            number_item.message.contains("item 1"),
            "{}",
            number_item.message
        );

        let keys: Vec<String> = (0..301).map(|i| format!("k{i}")).collect();
        let too_many = rejected(json!({"type":"purge_keys","service_id":"s1","keys":keys}));
        assert_eq!(too_many.code, ErrorCode::InvalidField);
        assert!(too_many.message.contains("301"), "{}", too_many.message);
    }

    #[test]
    fn soft_must_be_boolean() {
        let rejection =
            rejected(json!({"type":"purge_keys","service_id":"s1","keys":["a"],"soft":"yes"}));
        assert_eq!(rejection.code, ErrorCode::InvalidField);
        assert!(rejection.message.contains("soft"));
    }

    #[test]
    fn soft_purge_all_rejected() {
        let rejection = rejected(json!({"type":"purge_all","service_id":"s1","soft":true}));
        assert_eq!(rejection.code, ErrorCode::InvalidField);
        assert!(rejection.message.contains("no soft purge_all"));
        assert!(check(json!({"type":"purge_all","service_id":"s1","soft":false})).is_ok());
    }

    fn parts(url: &str) -> (String, String) {
        let url = PurgeUrl::parse(url).unwrap();
        (url.host, url.path_and_query)
    }

    #[test]
    fn url_path_encoding_and_query_kept() {
        let (host, path) = parts("https://www.Example.com/a%2Fb/c%20d.jpg?x=1&y=%41");
        assert_eq!(host, "www.example.com");
        assert_eq!(path, "/a%2Fb/c%20d.jpg?x=1&y=%41");
    }

    #[test]
    fn url_non_ascii_encoded_as_utf8() {
        assert_eq!(
            parts("http://example.com/caf\u{e9}?q=\u{fc}").1,
            "/caf%C3%A9?q=%C3%BC"
        );
    }

    #[test]
    fn url_port_and_fragment() {
        assert_eq!(
            parts("http://example.com:8080/a#frag"),
            ("example.com:8080".to_owned(), "/a".to_owned())
        );
        assert_eq!(parts("https://example.com:443/").0, "example.com");
    }

    #[test]
    fn url_dot_segments_cannot_leave_the_host() {
        assert_eq!(
            parts("http://example.com/../../service/abc/purge_all").1,
            "/service/abc/purge_all"
        );
        assert_eq!(parts("http://example.com/%2e%2e/%2E%2E/x").1, "/x");
    }

    #[test]
    fn invalid_url_hosts_rejected() {
        for bad in [
            "http://../service/abc/purge_all",
            "http://%2e%2e/service/abc/purge/k",
            "http://./x",
            "http://a..b/x",
            "http://.example.com/",
            "http://%7b/",
            "http://a%22b/x",
            "http://a`b/x",
            "https://ex}ample.com/",
            "http://a!b.example/",
        ] {
            assert!(PurgeUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PurgeUrl::parse("http://%41pi_1.Example.com/x")
                .unwrap()
                .host,
            "api_1.example.com"
        );
        assert!(PurgeUrl::parse("http://[::1]:8080/x").is_ok());
        assert!(PurgeUrl::parse("http://127.0.0.1/x").is_ok());
    }

    #[test]
    fn url_rules() {
        for bad in [
            "example.com/a",
            "/relative",
            "ftp://example.com/a",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "http://:pw@example.com/",
            "http://example.com/a\r\nX-Injected: 1",
            "http://example.com/a b",
            "http://exa\tmple.com/",
            "http://",
            "https://:80/",
        ] {
            let rejection = rejected(json!({"type":"purge_urls","urls":[bad]}));
            assert_eq!(rejection.code, ErrorCode::InvalidField, "{bad:?}");
            assert!(rejection.message.contains("urls"), "{bad:?}");
        }
        let too_many = rejected(
            json!({"type":"purge_urls","urls":["http://a/1","http://a/2","http://a/3","http://a/4","http://a/5","http://a/6"]}),
        );
        assert_eq!(too_many.code, ErrorCode::InvalidField);
    }

    #[test]
    fn type_rules() {
        assert_eq!(rejected(json!({})).code, ErrorCode::MissingField);
        let unknown = rejected(json!({"type":"purge_everything"}));
        assert_eq!(unknown.code, ErrorCode::UnknownType);
        assert!(unknown.message.contains("purge_everything"));
        assert!(unknown.message.contains("purge_keys"));
        assert_eq!(rejected(json!({"type":7})).code, ErrorCode::InvalidField);
    }

    #[test]
    fn list_services_paging_fields() {
        let job = check(json!({"type":"list_services","page":2,"per_page":50})).unwrap();
        assert_eq!(
            job.kind,
            JobKind::ListServices {
                page: Some(2),
                per_page: Some(50)
            }
        );
        for bad in [json!(0), json!(-1), json!(1.5), json!("2")] {
            let rejection = rejected(json!({"type":"list_services","page":bad}));
            assert_eq!(rejection.code, ErrorCode::InvalidField);
        }
        let rejection = rejected(json!({"type":"list_services","per_page":MAX_PER_PAGE + 1}));
        assert_eq!(rejection.code, ErrorCode::InvalidField);
    }

    #[test]
    fn id_and_account_types_checked() {
        assert_eq!(
            rejected(json!({"type":"get_token","id":5})).code,
            ErrorCode::InvalidField
        );
        assert_eq!(
            rejected(json!({"type":"get_token","id":""})).code,
            ErrorCode::InvalidField
        );
        assert_eq!(
            rejected(json!({"type":"get_token","account":["a"]})).code,
            ErrorCode::InvalidField
        );
        let job =
            check(json!({"type":"get_token","id":"abc","account":"shop","extra":{"ignored":true}}))
                .unwrap();
        assert_eq!(job.id, "abc");
        assert_eq!(job.account, "shop");
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::*;

        /// JSON values that look like jobs: a type from the contract or not, and fields of
        /// every kind, including strings with control characters and non-ASCII.
        fn job_value() -> impl Strategy<Value = Value> {
            let text = prop_oneof![
                "[ -~]{0,20}",
                "\\PC{0,12}",
                Just("a\r\nb".to_owned()),
                Just("http://../x".to_owned()),
                Just("https://example.com/a b".to_owned()),
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                text.clone().prop_map(Value::from),
            ];
            let field = leaf.prop_recursive(2, 16, 6, |inner| {
                prop::collection::vec(inner, 0..6).prop_map(Value::from)
            });
            let job_type = prop_oneof![
                Just("purge_keys"),
                Just("purge_urls"),
                Just("purge_all"),
                Just("list_services"),
                Just("get_service"),
                Just("get_account"),
                Just("get_token"),
                Just("flush"),
            ];
            let names = prop_oneof![
                Just("service_id"),
                Just("keys"),
                Just("urls"),
                Just("soft"),
                Just("page"),
                Just("per_page"),
                Just("id"),
                Just("account"),
            ];
            (job_type, prop::collection::vec((names, field), 0..8)).prop_map(
                |(job_type, fields)| {
                    let mut map = Map::new();
                    map.insert("type".to_owned(), Value::from(job_type));
                    for (name, value) in fields {
                        map.insert(name.to_owned(), value);
                    }
                    Value::Object(map)
                },
            )
        }

        proptest! {
            /// Decoding any bytes ends in an envelope or a rejection, never a panic.
            #[test]
            fn decode_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode(&body, &MessageMeta::default(), 1024);
            }

            /// Whatever a job contains, validation either rejects it or returns a job whose
            /// every field keeps the contract's rules.
            #[test]
            fn accepted_jobs_keep_the_rules(value in job_value()) {
                let body = serde_json::to_vec(&value).unwrap();
                let Ok(envelope) = decode(&body, &MessageMeta::default(), usize::MAX) else {
                    return Ok(());
                };
                let Ok(job) = validate(&envelope, &limits()) else {
                    return Ok(());
                };
                if let Some(service_id) = job.kind.service_id() {
                    prop_assert!(service_id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
                }
                match &job.kind {
                    JobKind::PurgeKeys { keys, .. } => {
                        prop_assert!(!keys.is_empty() && keys.len() <= limits().max_keys);
                        for key in keys {
                            prop_assert!((1..=MAX_KEY_BYTES).contains(&key.len()));
                            prop_assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                        }
                        let mut unique = keys.clone();
                        unique.sort();
                        unique.dedup();
                        prop_assert_eq!(unique.len(), keys.len());
                    }
                    JobKind::PurgeUrls { urls, .. } => {
                        prop_assert!(!urls.is_empty() && urls.len() <= limits().max_urls);
                        for url in urls {
                            prop_assert!(url.path_and_query.starts_with('/'));
                            prop_assert!(!url.host.is_empty());
                            prop_assert!(!url.path_and_query.chars().any(|c| c.is_control() || c.is_whitespace()));
                        }
                    }
                    _ => {}
                }
            }

            /// Any string parses as a purge URL or is rejected; an accepted one never has a
            /// host of dots or an empty label.
            #[test]
            fn purge_url_hosts_are_real(text in "(https?://)?[a-z.%2e]{0,12}(:[0-9]{1,5})?(/[ -~]{0,12}){0,3}") {
                if let Ok(url) = PurgeUrl::parse(&text) {
                    let host = url.host.split(':').next().unwrap_or_default();
                    prop_assert!(!host.is_empty());
                    prop_assert!(host.split('.').all(|label| !label.is_empty()));
                }
            }
        }
    }
}
