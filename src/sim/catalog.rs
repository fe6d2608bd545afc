//! The seeded services with their reply bodies serialized once at start, and lookups by id,
//! name and owner.

use std::collections::HashMap;

use axum::body::Bytes;

use super::model::{Service, seed_services};

/// A seeded service and its pre-serialized JSON bodies.
#[derive(Debug)]
pub struct CatalogEntry {
    pub service: Service,
    /// Item of the `GET /service` array.
    pub list_item: String,
    /// Body of `GET /service/{id}`.
    pub get_body: Bytes,
    /// Body of `GET /service/{id}/details` without a `version` parameter.
    pub details_body: Bytes,
    /// Body of `GET /service/search?name=...`.
    pub search_body: Bytes,
}

/// Every seeded service, in creation order, which is also the default list order.
#[derive(Debug)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
}

impl Catalog {
    pub fn new(count: usize, owner_customer_id: &str) -> Self {
        let entries: Vec<CatalogEntry> = seed_services(count, owner_customer_id)
            .into_iter()
            .map(|service| {
                let details = service.details_json(service.current_version());
                let mut search = service.get_json();
                if let Some(object) = search.as_object_mut() {
                    object.remove("paused");
                    object.remove("publish_key");
                }
                CatalogEntry {
                    list_item: service.list_item_json().to_string(),
                    get_body: service.get_json().to_string().into(),
                    details_body: details.to_string().into(),
                    search_body: search.to_string().into(),
                    service,
                }
            })
            .collect();
        let by_id = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| (entry.service.id.clone(), index))
            .collect();
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| (entry.service.name.clone(), index))
            .collect();

        Self {
            entries,
            by_id,
            by_name,
        }
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// Finds a service of `customer_id` by id. Another customer's service is not found.
    pub fn by_id(&self, service_id: &str, customer_id: &str) -> Option<&CatalogEntry> {
        let entry = &self.entries[*self.by_id.get(service_id)?];
        (entry.service.customer_id == customer_id).then_some(entry)
    }

    /// Finds a service of `customer_id` by its exact name.
    pub fn by_name(&self, name: &str, customer_id: &str) -> Option<&CatalogEntry> {
        let entry = &self.entries[*self.by_name.get(name)?];
        (entry.service.customer_id == customer_id).then_some(entry)
    }

    pub fn service_ids(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|entry| entry.service.id.clone())
            .collect()
    }
}
