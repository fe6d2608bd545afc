//! Service read endpoints: the paged service list with its RFC 8288 `Link` header, one
//! service, its details, and search by name.

use axum::http::StatusCode;
use axum::http::header::{HeaderValue, LINK};
use serde_json::json;
use url::form_urlencoded;

use super::catalog::CatalogEntry;
use super::handler::RequestContext;
use super::reply::Reply;

const DEFAULT_PER_PAGE: usize = 20;
const MAX_PER_PAGE: usize = 1000;

/// Query parameters of `GET /service`.
struct ListQuery {
    page: usize,
    per_page: usize,
    sort: Option<String>,
    descending: bool,
    /// Every parameter except `page` and `per_page`, repeated in the `Link` URLs.
    link_params: Vec<(String, String)>,
}

impl ListQuery {
    /// Parses the query, or returns the detail of a 400 reply for an invalid page or per_page.
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut list_query = ListQuery {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            sort: None,
            descending: false,
            link_params: Vec::new(),
        };
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        for (name, value) in pairs {
            match name.as_ref() {
                "page" => {
                    let page = value.parse().ok().filter(|page| *page >= 1);
                    list_query.page = page.ok_or_else(|| {
                        format!("Invalid value {value:?} for page: expected a positive integer")
                    })?;
                }
                "per_page" => {
                    let per_page = value
                        .parse()
                        .ok()
                        .filter(|per_page| (1..=MAX_PER_PAGE).contains(per_page));
                    list_query.per_page = per_page.ok_or_else(|| {
                        format!(
                            "Invalid value {value:?} for per_page: expected 1 to {MAX_PER_PAGE}"
                        )
                    })?;
                }
                _ => {
                    if name == "sort" {
                        list_query.sort = Some(value.to_string());
                    }
                    if name == "direction" {
                        list_query.descending = value == "descend";
                    }
                    list_query
                        .link_params
                        .push((name.into_owned(), value.into_owned()));
                }
            }
        }
        Ok(list_query)
    }

    /// Returns the absolute URL of `page`, with the parameters sorted by name as Fastly sends.
    fn page_url(&self, host: &str, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = self
            .link_params
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        pairs.push(("page", page.to_string()));
        pairs.push(("per_page", self.per_page.to_string()));
        pairs.sort_by(|left, right| left.0.cmp(right.0));

        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("http://{host}/service?{query}")
    }
}

/// Lists the services the token may see, one page at a time, as a bare JSON array. Pages link
/// to each other with `rel="last"`, `"next"`, `"prev"` and `"first"`, in the order of Fastly's
/// replies. A list that fits on one page has no `Link` header.
///
/// `sort` accepts `created` (the default), `name` and `updated`, and `direction=descend`
/// reverses the order. Other values are ignored.
// NOTE: a token limited to some services sees only those here. Whether Fastly filters its
// list the same way is unverified.
pub fn list(context: &RequestContext) -> Reply {
    let list_query = match ListQuery::parse(context.query) {
        Ok(list_query) => list_query,
        Err(detail) => return Reply::bad_request(&detail),
    };

    let mut visible: Vec<&CatalogEntry> = context
        .state
        .catalog
        .entries()
        .iter()
        .filter(|entry| is_visible(context, entry))
        .collect();
    match list_query.sort.as_deref() {
        Some("name") => visible.sort_by(|left, right| left.service.name.cmp(&right.service.name)),
        Some("updated") => visible.sort_by_key(|entry| entry.service.updated_at),
        _ => visible.sort_by_key(|entry| entry.service.created_at),
    }
    if list_query.descending {
        visible.reverse();
    }

    let per_page = list_query.per_page;
    let page = list_query.page;
    let last_page = visible.len().div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page).min(visible.len());
    let end = start.saturating_add(per_page).min(visible.len());

    let mut body = String::with_capacity(
        2 + visible[start..end]
            .iter()
            .map(|entry| entry.list_item.len() + 1)
            .sum::<usize>(),
    );
    body.push('[');
    for (index, entry) in visible[start..end].iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(&entry.list_item);
    }
    body.push(']');
    let mut reply = Reply::raw_json(StatusCode::OK, body.into_bytes());

    if last_page > 1 {
        let host = context
            .header("host")
            .map_or_else(|| context.state.local_addr.to_string(), str::to_string);
        let mut links = Vec::with_capacity(4);
        if page < last_page {
            links.push((list_query.page_url(&host, last_page), "last"));
            links.push((list_query.page_url(&host, page + 1), "next"));
        }
        if page > 1 {
            links.push((list_query.page_url(&host, page - 1), "prev"));
            links.push((list_query.page_url(&host, 1), "first"));
        }
        let link = links
            .iter()
            .map(|(url, rel)| format!("<{url}>; rel=\"{rel}\""))
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(value) = HeaderValue::try_from(link) {
            reply.headers.insert(LINK, value);
        }
    }
    reply
}

/// Tells whether the token's customer owns the service and the token may use it.
fn is_visible(context: &RequestContext, entry: &CatalogEntry) -> bool {
    entry.service.customer_id == context.token.customer_id()
        && context.token.allows_service(&entry.service.id)
}

fn find<'s>(context: &RequestContext<'s>, service_id: &str) -> Option<&'s CatalogEntry> {
    context
        .state
        .catalog
        .by_id(service_id, context.token.customer_id())
}

/// Builds Fastly's reply to an unknown service id: 400, not 404.
fn unknown_service(service_id: &str) -> Reply {
    Reply::bad_request(&format!("Cannot find service '{service_id}'"))
}

/// Returns one service with `versions[]` and no top-level `version`.
pub fn get(context: &RequestContext, service_id: &str) -> Reply {
    match find(context, service_id) {
        Some(entry) => Reply::raw_json(StatusCode::OK, entry.get_body.clone()),
        None => unknown_service(service_id),
    }
}

/// Returns one service with the full `version` object and `active_version` (or null). The
/// `version=N` parameter picks the version shown. Without it, the active version is shown, or
/// the latest when none is active.
// NOTE: `filter[versions.active]` and similar filters are accepted and ignored, because the
// recorded replies to them still listed inactive versions.
pub fn details(context: &RequestContext, service_id: &str) -> Reply {
    let Some(entry) = find(context, service_id) else {
        return unknown_service(service_id);
    };
    let requested_version = form_urlencoded::parse(context.query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "version")
        .map(|(_, value)| value.into_owned());
    let Some(requested_version) = requested_version else {
        return Reply::raw_json(StatusCode::OK, entry.details_body.clone());
    };

    let version = requested_version
        .parse::<u32>()
        .ok()
        .and_then(|number| entry.service.version(number));
    match version {
        Some(version) => Reply::json(StatusCode::OK, &entry.service.details_json(version)),
        None => Reply::bad_request(&format!(
            "Version {requested_version:?} of service '{service_id}' does not exist"
        )),
    }
}

/// Returns the service with the exact name given by `name`, as one object.
pub fn search(context: &RequestContext) -> Reply {
    let name = form_urlencoded::parse(context.query.unwrap_or_default().as_bytes())
        .find(|(parameter, _)| parameter == "name")
        .map(|(_, value)| value.into_owned());
    let Some(name) = name else {
        return Reply::bad_request("Missing required parameter 'name'");
    };

    let entry = context
        .state
        .catalog
        .by_name(&name, context.token.customer_id())
        .filter(|entry| context.token.allows_service(&entry.service.id));
    match entry {
        Some(entry) => Reply::raw_json(StatusCode::OK, entry.search_body.clone()),
        None => Reply::json(
            StatusCode::NOT_FOUND,
            &json!({ "msg": "Record not found", "details": "Cannot find service" }),
        ),
    }
}
