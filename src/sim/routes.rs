//! Route table: which Fastly endpoint a method and raw path name, and the scope each needs.

use axum::http::Method;

use super::tokens::Scope;

/// A Fastly API endpoint that the simulator serves, with the ids taken from the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `POST /service/{id}/purge`: many surrogate keys.
    BulkPurge { service_id: &'a str },
    /// `POST /service/{id}/purge/{key}`, with the key percent-decoded.
    KeyPurge { service_id: &'a str, key: String },
    /// `POST /purge/{host}/{path}`. `url` is everything after `/purge/`, query included, as
    /// received.
    UrlPurge { url: String },
    /// `POST /service/{id}/purge_all`.
    PurgeAll { service_id: &'a str },
    /// `GET /service`.
    ListServices,
    /// `GET /service/search?name=...`.
    SearchService,
    /// `GET /service/{id}`.
    GetService { service_id: &'a str },
    /// `GET /service/{id}/details`.
    ServiceDetails { service_id: &'a str },
    /// `GET /current_user`.
    CurrentUser,
    /// `GET /current_customer`.
    CurrentCustomer,
    /// `GET /customer/{id}`.
    Customer { customer_id: &'a str },
    /// `GET /tokens/self`.
    TokenSelf,
    /// Anything else.
    NotFound,
}

impl<'a> Route<'a> {
    /// Finds the route for a method, raw (not percent-decoded) path and raw query.
    pub fn parse(method: &Method, path: &'a str, query: Option<&str>) -> Route<'a> {
        let is_read = method == Method::GET || method == Method::HEAD;
        let is_post = method == Method::POST;

        if is_post && let Some(url) = path.strip_prefix("/purge/") {
            let host = url.split('/').next().unwrap_or_default();
            if host.is_empty() {
                return Route::NotFound;
            }
            let url = match query {
                Some(query) => format!("{url}?{query}"),
                None => url.to_string(),
            };
            return Route::UrlPurge { url };
        }

        let Some(relative) = path.strip_prefix('/') else {
            return Route::NotFound;
        };
        let segments: Vec<&str> = relative.split('/').collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return Route::NotFound;
        }

        match (is_read, is_post, segments.as_slice()) {
            (true, _, ["service"]) => Route::ListServices,
            (true, _, ["service", "search"]) => Route::SearchService,
            (true, _, ["service", service_id]) => Route::GetService { service_id },
            (true, _, ["service", service_id, "details"]) => Route::ServiceDetails { service_id },
            (_, true, ["service", service_id, "purge"]) => Route::BulkPurge { service_id },
            (_, true, ["service", service_id, "purge", key]) => Route::KeyPurge {
                service_id,
                key: percent_decode(key),
            },
            (_, true, ["service", service_id, "purge_all"]) => Route::PurgeAll { service_id },
            (true, _, ["current_user"]) => Route::CurrentUser,
            (true, _, ["current_customer"]) => Route::CurrentCustomer,
            (true, _, ["customer", customer_id]) => Route::Customer { customer_id },
            (true, _, ["tokens", "self"]) => Route::TokenSelf,
            _ => Route::NotFound,
        }
    }

    /// Returns the scope the route needs, or `None` for an unknown route.
    pub fn scope(&self) -> Option<Scope> {
        match self {
            Route::BulkPurge { .. } | Route::KeyPurge { .. } | Route::UrlPurge { .. } => {
                Some(Scope::PurgeSelect)
            }
            Route::PurgeAll { .. } => Some(Scope::PurgeAll),
            Route::TokenSelf => Some(Scope::AnyToken),
            Route::ListServices
            | Route::SearchService
            | Route::GetService { .. }
            | Route::ServiceDetails { .. }
            | Route::CurrentUser
            | Route::CurrentCustomer
            | Route::Customer { .. } => Some(Scope::Read),
            Route::NotFound => None,
        }
    }

    /// Returns the service a service-scoped route acts on.
    pub fn service_id(&self) -> Option<&'a str> {
        match self {
            Route::BulkPurge { service_id }
            | Route::KeyPurge { service_id, .. }
            | Route::PurgeAll { service_id }
            | Route::GetService { service_id }
            | Route::ServiceDetails { service_id } => Some(service_id),
            _ => None,
        }
    }

    /// Tells whether the route is a surrogate-key or URL purge. Those use the purge budget
    /// instead of the write limit.
    pub fn is_key_or_url_purge(&self) -> bool {
        matches!(
            self,
            Route::BulkPurge { .. } | Route::KeyPurge { .. } | Route::UrlPurge { .. }
        )
    }
}

/// Decodes `%XX` escapes in a path segment. Invalid escapes are kept as they are, and bytes
/// that are not UTF-8 after decoding are replaced.
pub fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes
            .get(index + 1..index + 3)
            .filter(|_| bytes[index] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_routes_parse() {
        assert_eq!(
            Route::parse(&Method::POST, "/service/abc/purge", None),
            Route::BulkPurge { service_id: "abc" }
        );
        assert_eq!(
            Route::parse(&Method::POST, "/service/abc/purge/a%2Fb", None),
            Route::KeyPurge {
                service_id: "abc",
                key: "a/b".to_string()
            }
        );
        assert_eq!(
            Route::parse(&Method::POST, "/service/abc/purge_all", None),
            Route::PurgeAll { service_id: "abc" }
        );
        assert_eq!(
            Route::parse(&Method::POST, "/purge/www.example.com/a%2Fb/c", Some("x=1")),
            Route::UrlPurge {
                url: "www.example.com/a%2Fb/c?x=1".to_string()
            }
        );
    }

    #[test]
    fn wrong_method_or_shape_is_not_found() {
        assert_eq!(
            Route::parse(&Method::GET, "/service/abc/purge_all", None),
            Route::NotFound
        );
        assert_eq!(
            Route::parse(&Method::POST, "/service/abc/purge/a/b", None),
            Route::NotFound
        );
        assert_eq!(
            Route::parse(&Method::POST, "/purge/", None),
            Route::NotFound
        );
        assert_eq!(
            Route::parse(&Method::GET, "/service/", None),
            Route::NotFound
        );
    }

    #[test]
    fn read_routes_parse() {
        assert_eq!(
            Route::parse(&Method::HEAD, "/service", None),
            Route::ListServices
        );
        assert_eq!(
            Route::parse(&Method::GET, "/service/abc/details", None),
            Route::ServiceDetails { service_id: "abc" }
        );
        assert_eq!(
            Route::parse(&Method::GET, "/tokens/self", None),
            Route::TokenSelf
        );
        assert_eq!(
            Route::parse(&Method::GET, "/customer/xyz", None),
            Route::Customer { customer_id: "xyz" }
        );
    }

    #[test]
    fn percent_decode_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
