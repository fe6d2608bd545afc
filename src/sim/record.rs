//! Request log and counters: what the simulator received and how it replied.

use std::collections::{BTreeMap, VecDeque};

use serde::{Serialize, Serializer};

use super::chaos::{ChaosKind, ChaosStats};

/// One request to a Fastly API path, as received, with the status the simulator sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path plus `?query`, exactly as received.
    pub path: String,
    /// The `Fastly-Key` header value.
    pub token: Option<String>,
    /// Every request header except `Fastly-Key`, with lowercase names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Request body. Served over HTTP as a string, with invalid UTF-8 replaced.
    #[serde(serialize_with = "serialize_lossy_utf8")]
    pub body: Vec<u8>,
    /// Status of the reply the simulator sent, or 0 when it sent none: chaos mode reset the
    /// connection, or closed it after a hang. A reply sent after a hang is recorded with its
    /// status even if the client stopped waiting for it.
    pub status: u16,
    /// Faults that chaos mode applied to the request, in the order applied, for example
    /// `[Slow, ServerError]`. Empty for a request that chaos mode left alone. Injected
    /// [`super::Fault`]s are not listed.
    pub chaos: Vec<ChaosKind>,
}

fn serialize_lossy_utf8<S: Serializer>(body: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(body))
}

impl RecordedRequest {
    /// Returns the first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Tells whether the request asked for a soft purge (`Fastly-Soft-Purge: 1`).
    pub fn soft(&self) -> bool {
        self.header("fastly-soft-purge").map(str::trim) == Some("1")
    }

    /// Returns the surrogate keys the request named: the `surrogate_keys` array of a JSON body,
    /// else the space-separated `Surrogate-Key` header, else the key in the path of a
    /// single-key purge (`/service/{id}/purge/{key}`, percent-decoded).
    pub fn surrogate_keys(&self) -> Vec<String> {
        if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&self.body)
            && let Some(keys) = body.get("surrogate_keys").and_then(|keys| keys.as_array())
        {
            return keys
                .iter()
                .filter_map(|key| key.as_str().map(str::to_string))
                .collect();
        }
        if let Some(header) = self.header("surrogate-key") {
            return header.split_whitespace().map(str::to_string).collect();
        }

        let path = self.path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["service", _, "purge", key] if !key.is_empty() => {
                vec![super::routes::percent_decode(key)]
            }
            _ => Vec::new(),
        }
    }
}

/// Counters over every request to a Fastly API path since start or the last reset. Requests to
/// the `/_sim/` control endpoints are not counted. Requests that got no reply are counted under
/// status 0 in `by_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Write requests charged to a user's write limit, including those that then failed.
    pub writes: u64,
    /// Successful purge requests of every kind: bulk, single key, URL and purge_all.
    pub purges: u64,
    /// Replies with status 429, from the rate limits or from injected faults.
    pub rate_limited: u64,
    /// Highest number of write requests, rejected ones included, from one user in one
    /// rate-limit window.
    pub max_write_requests_in_window: u32,
    /// Surrogate keys named in successful bulk and single-key purges.
    pub keys_purged: u64,
    /// Faults applied by chaos mode, per kind.
    pub chaos: ChaosStats,
}

/// Counter changes caused by one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub write_charged: bool,
    pub purge_succeeded: bool,
    pub keys_purged: u64,
    /// The chaos fault that replaced the reply: a storm 429 or a random 5xx.
    pub chaos: Option<ChaosKind>,
}

/// Bounded request log plus counters, behind one lock in [`super::state::SimState`].
#[derive(Debug)]
pub struct Recorder {
    limit: usize,
    log: VecDeque<RecordedRequest>,
    stats: SimStats,
}

impl Recorder {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            log: VecDeque::new(),
            stats: SimStats::default(),
        }
    }

    pub fn record(&mut self, request: RecordedRequest, outcome: Outcome) {
        let stats = &mut self.stats;
        stats.requests += 1;
        *stats.by_status.entry(request.status).or_insert(0) += 1;
        if request.status == 429 {
            stats.rate_limited += 1;
        }
        if outcome.write_charged {
            stats.writes += 1;
        }
        if outcome.purge_succeeded {
            stats.purges += 1;
        }
        stats.keys_purged += outcome.keys_purged;
        for kind in &request.chaos {
            stats.chaos.count(*kind);
        }

        if self.limit == 0 {
            return;
        }
        if self.log.len() == self.limit {
            self.log.pop_front();
        }
        self.log.push_back(request);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.iter().cloned().collect()
    }

    /// Returns the counters. The limiter keeps `max_write_requests_in_window`, so it is 0
    /// here.
    pub fn stats(&self) -> SimStats {
        self.stats.clone()
    }

    pub fn clear_requests(&mut self) {
        self.log.clear();
    }

    pub fn clear(&mut self) {
        self.log.clear();
        self.stats = SimStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)], body: &str) -> RecordedRequest {
        RecordedRequest {
            method: "POST".to_string(),
            path: path.to_string(),
            token: None,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            status: 200,
            chaos: Vec::new(),
        }
    }

    #[test]
    fn surrogate_keys_from_each_source() {
        let from_body = request("/service/s/purge", &[], r#"{"surrogate_keys":["a","b"]}"#);
        let from_header = request("/service/s/purge", &[("surrogate-key", "c  d")], "");
        let from_path = request("/service/s/purge/a%2Fb", &[], "");

        assert_eq!(from_body.surrogate_keys(), ["a", "b"]);
        assert_eq!(from_header.surrogate_keys(), ["c", "d"]);
        assert_eq!(from_path.surrogate_keys(), ["a/b"]);
    }

    #[test]
    fn soft_and_header_lookup() {
        let soft = request("/purge/h/p", &[("fastly-soft-purge", "1")], "");
        let hard = request("/purge/h/p", &[], "");

        assert!(soft.soft());
        assert!(!hard.soft());
        assert_eq!(soft.header("Fastly-Soft-Purge"), Some("1"));
    }

    #[test]
    fn log_drops_oldest_but_counts_all() {
        let mut recorder = Recorder::new(2);

        for path in ["/a", "/b", "/c"] {
            recorder.record(request(path, &[], ""), Outcome::default());
        }

        let paths: Vec<String> = recorder.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/b", "/c"]);
        assert_eq!(recorder.stats().requests, 3);
        assert_eq!(recorder.stats().by_status.get(&200), Some(&3));
    }
}
