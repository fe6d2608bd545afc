//! Users and customers derived from the configured tokens, and their JSON shapes for
//! `GET /current_user` and `GET /customer/{id}`.

use std::collections::HashMap;

use chrono::{DateTime, Duration as TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};

use super::config::SimToken;
use super::model::timestamp;

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub customer_id: String,
    pub name: String,
    pub login: String,
    pub role: &'static str,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub created_at: DateTime<Utc>,
}

/// Every user and customer named by a token. The first user seen for a customer is its owner
/// and a superuser. Later users of the same customer are engineers.
#[derive(Debug, Default)]
pub struct Accounts {
    users: HashMap<String, User>,
    customers: HashMap<String, Customer>,
}

impl Accounts {
    pub fn new(tokens: &[SimToken]) -> Self {
        let first_created = Utc
            .with_ymd_and_hms(2020, 11, 4, 9, 51, 20)
            .single()
            .expect("seed time is a valid UTC time");
        let mut accounts = Accounts::default();

        for token in tokens {
            if !accounts.customers.contains_key(&token.customer_id) {
                let number = accounts.customers.len() + 1;
                accounts.customers.insert(
                    token.customer_id.clone(),
                    Customer {
                        id: token.customer_id.clone(),
                        name: format!("Example Customer {number}"),
                        owner_id: token.user_id.clone(),
                        created_at: first_created + TimeDelta::days(number as i64 - 1),
                    },
                );
            }
            if !accounts.users.contains_key(&token.user_id) {
                let number = accounts.users.len() + 1;
                let is_owner = accounts.customers[&token.customer_id].owner_id == token.user_id;
                accounts.users.insert(
                    token.user_id.clone(),
                    User {
                        id: token.user_id.clone(),
                        customer_id: token.customer_id.clone(),
                        name: format!("Example User {number}"),
                        login: format!("user{number}@example.com"),
                        role: if is_owner { "superuser" } else { "engineer" },
                        created_at: first_created + TimeDelta::days(30 + number as i64),
                    },
                );
            }
        }
        accounts
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.get(id)
    }

    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.customers.get(id)
    }
}

impl User {
    /// Returns the `GET /current_user` body.
    pub fn json(&self, now: DateTime<Utc>) -> Value {
        json!({
            "id": self.id,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.created_at + TimeDelta::days(90)),
            "name": self.name,
            "customer_id": self.customer_id,
            "require_new_password": false,
            "role": self.role,
            "login": self.login,
            "deleted_at": null,
            "locked": false,
            "two_factor_auth_enabled": false,
            "limit_services": false,
            "last_active_at": timestamp(now),
        })
    }
}

impl Customer {
    /// Returns the `GET /customer/{id}` body.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "owner_id": self.owner_id,
            "pricing_plan": "Developer",
            "billing_network_type": "public",
            "force_2fa": false,
            "force_sso": false,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.created_at + TimeDelta::days(200)),
        })
    }
}
