//! Seeded services and their versions, and their JSON shapes as Fastly's service endpoints
//! return them (list items, `GET /service/{id}` and `GET /service/{id}/details`).

use chrono::{DateTime, Duration as TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};

use super::ids::derive_id;

/// Service names cycled through when seeding. Each name's domain replaces `-` with `.`.
const SERVICE_NAMES: [&str; 8] = [
    "www-example-com",
    "api-example-com",
    "static-example-com",
    "shop-example-com",
    "media-example-com",
    "docs-example-com",
    "images-example-com",
    "blog-example-com",
];

#[derive(Debug, Clone)]
pub struct Version {
    pub number: u32,
    pub active: bool,
    pub locked: bool,
    pub comment: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub domain: String,
    /// `vcl` or `wasm` (Compute).
    pub kind: &'static str,
    pub customer_id: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub versions: Vec<Version>,
}

/// Formats a time the way Fastly does: `2022-11-04T17:51:46Z`.
pub fn timestamp(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Builds `count` services owned by `customer_id`, in creation order. Service `i` has
/// `1 + i % 4` versions. Most activate their latest version. Every even service with three or
/// more versions has an unlocked draft after its active version, and every fifth service
/// (i % 5 == 3) has never been activated.
pub fn seed_services(count: usize, customer_id: &str) -> Vec<Service> {
    let first_created = Utc
        .with_ymd_and_hms(2021, 3, 15, 9, 12, 40)
        .single()
        .expect("seed time is a valid UTC time");

    (0..count)
        .map(|index| {
            let created_at = first_created
                + TimeDelta::days(index as i64)
                + TimeDelta::minutes(37 * index as i64);
            seed_service(index, customer_id, created_at)
        })
        .collect()
}

fn seed_service(index: usize, customer_id: &str, created_at: DateTime<Utc>) -> Service {
    let base_name = SERVICE_NAMES[index % SERVICE_NAMES.len()];
    let round = index / SERVICE_NAMES.len();
    let (name, subdomain_suffix) = if round == 0 {
        (base_name.to_string(), String::new())
    } else {
        (
            format!("{base_name}-{}", round + 1),
            (round + 1).to_string(),
        )
    };
    let (subdomain, rest) = base_name
        .split_once('-')
        .expect("every seeded name contains a dash");
    let domain = format!("{subdomain}{subdomain_suffix}.{}", rest.replace('-', "."));

    let version_count = 1 + (index % 4) as u32;
    let active_number = if index % 5 == 3 {
        None
    } else if version_count >= 3 && index.is_multiple_of(2) {
        Some(version_count - 1)
    } else {
        Some(version_count)
    };

    let versions: Vec<Version> = (1..=version_count)
        .map(|number| {
            let version_created = created_at
                + TimeDelta::days(3 * i64::from(number - 1))
                + TimeDelta::hours(2 * i64::from(number - 1));
            let activated = active_number.is_some_and(|active| number <= active);
            Version {
                number,
                active: Some(number) == active_number,
                locked: activated,
                comment: if number == 1 {
                    String::new()
                } else {
                    format!("Change {number}")
                },
                created_at: version_created,
                updated_at: version_created + TimeDelta::minutes(12),
            }
        })
        .collect();

    let updated_at = versions
        .last()
        .map(|version| version.updated_at)
        .unwrap_or(created_at);

    Service {
        id: derive_id("service", index as u64),
        name,
        domain,
        kind: if index % 5 == 4 { "wasm" } else { "vcl" },
        customer_id: customer_id.to_string(),
        comment: if index % 3 == 1 {
            "Managed by Terraform".to_string()
        } else {
            String::new()
        },
        created_at,
        updated_at,
        versions,
    }
}

impl Service {
    pub fn active_version(&self) -> Option<&Version> {
        self.versions.iter().find(|version| version.active)
    }

    /// The version that the list's `version` field and the details' `version` object show:
    /// the active version, or the latest one when none is active.
    pub fn current_version(&self) -> &Version {
        self.active_version()
            .or_else(|| self.versions.last())
            .expect("every seeded service has at least one version")
    }

    pub fn version(&self, number: u32) -> Option<&Version> {
        self.versions
            .iter()
            .find(|version| version.number == number)
    }

    /// Returns the item shape of `GET /service`.
    pub fn list_item_json(&self) -> Value {
        let mut item = self.base_json();
        item["version"] = json!(self.current_version().number);
        item["paused"] = json!(false);
        item
    }

    /// Returns the shape of `GET /service/{id}`: `versions[]` but no top-level `version`.
    pub fn get_json(&self) -> Value {
        let mut item = self.base_json();
        item["paused"] = json!(false);
        item["publish_key"] = json!("");
        item
    }

    /// Returns the shape of `GET /service/{id}/details`, showing `version` in full.
    pub fn details_json(&self, version: &Version) -> Value {
        let mut item = self.base_json();
        item["version"] = self.full_version_json(version);
        item["active_version"] = match self.active_version() {
            Some(active) => self.full_version_json(active),
            None => Value::Null,
        };
        item
    }

    fn base_json(&self) -> Value {
        let versions: Vec<Value> = self
            .versions
            .iter()
            .map(|version| self.version_json(version))
            .collect();
        json!({
            "id": self.id,
            "name": self.name,
            "type": self.kind,
            "customer_id": self.customer_id,
            "comment": self.comment,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "deleted_at": null,
            "environments": [],
            "versions": versions,
        })
    }

    fn version_json(&self, version: &Version) -> Value {
        json!({
            "number": version.number,
            "service_id": self.id,
            "active": version.active,
            "locked": version.locked,
            "deployed": false,
            "staging": false,
            "testing": false,
            "comment": version.comment,
            "environments": [],
            "created_at": timestamp(version.created_at),
            "updated_at": timestamp(version.updated_at),
            "deleted_at": null,
        })
    }

    /// Returns a version with its configuration collections, as in the details reply. Compute
    /// services carry only backends, domains and healthchecks there.
    fn full_version_json(&self, version: &Version) -> Value {
        let mut full = self.version_json(version);
        full["domains"] = json!([{
            "name": self.domain,
            "comment": "",
            "service_id": self.id,
            "version": version.number,
            "created_at": timestamp(version.created_at),
            "updated_at": timestamp(version.created_at),
            "deleted_at": null,
        }]);
        full["backends"] = json!([]);
        full["healthchecks"] = json!([]);
        if self.kind == "wasm" {
            return full;
        }

        for collection in [
            "acls",
            "cache_settings",
            "conditions",
            "dictionaries",
            "directors",
            "gzips",
            "headers",
            "request_settings",
            "response_objects",
            "snippets",
            "vcls",
            "wordpress",
        ] {
            full[collection] = json!([]);
        }
        full["settings"] = json!({
            "general.default_ttl": 3600,
            "general.stale_if_error_ttl": 43200,
            "general.stale_if_error": false,
            "general.default_pci": 0,
            "general.default_host": "",
        });
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_services_cover_version_states() {
        let services = seed_services(10, "customer");

        assert_eq!(services.len(), 10);
        assert_eq!(services[0].name, "www-example-com");
        assert_eq!(services[0].domain, "www.example.com");
        assert_eq!(services[8].name, "www-example-com-2");
        assert_eq!(services[8].domain, "www2.example.com");
        assert!(services[3].active_version().is_none());
        assert_eq!(services[2].versions.len(), 3);
        assert_eq!(services[2].current_version().number, 2);
        assert!(!services[2].versions[2].locked);
        assert_eq!(services[4].kind, "wasm");
        assert!(services[0].created_at < services[1].created_at);
    }
}
