//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the HTTP API, written by hand in
//! `openapi.json` next to this file and compiled in.
//!
//! Guarantee: the document and the router cannot drift apart unnoticed. [`route_table`] is
//! recorded while the router is built, and the tests check that the document's `/api` operations
//! are exactly those routes (here) and that every documented operation is answered by the
//! running server (`tests/suite/api.rs`).

use axum::http::{header, Method};
use axum::response::IntoResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

/// The API routes the router serves: (path, method).
pub fn route_table() -> Vec<(&'static str, Method)> {
    super::routes().table
}

/// The operations the document describes: (path, method), methods upper case.
#[allow(
    clippy::expect_used,
    reason = "the document is a compiled-in constant, checked by the unit tests"
)]
pub fn documented() -> Vec<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                out.push((path.clone(), method.to_ascii_uppercase()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_exactly_the_api_routes() {
        let mut served: Vec<(String, String)> = route_table()
            .into_iter()
            .map(|(p, m)| (p.to_owned(), m.as_str().to_owned()))
            .collect();
        served.sort();
        let documented: Vec<(String, String)> = documented()
            .into_iter()
            .filter(|(p, _)| p.starts_with("/api/"))
            .collect();
        assert_eq!(documented, served);
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
