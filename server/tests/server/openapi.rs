//! The OpenAPI 3.1 document at `/api/openapi.json`: every HTTP route of the router is in it,
//! and everything in it is a route that answers.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::fixture::TestServer;

/// Routes that are protocols rather than REST endpoints (WebSocket upgrades, SockJS), or the
/// catch-alls that answer 404 for unknown API paths. The README describes the protocols.
const NOT_REST: [&str; 9] = [
    "/ws",
    "/ws/json",
    "/ws/info",
    "/ws/iframe.html",
    "/ws/websocket",
    "/ws/{server}/{session}/websocket",
    "/ws/{server}/{session}/{transport}",
    "/api",
    "/api/{*rest}",
];

/// Every path literal given to axum's `.route(` in the server's sources.
fn routed_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split(".route(\"").skip(1) {
                    paths.insert(piece.split('"').next().unwrap().to_owned());
                }
            }
        }
    }
    paths
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_answers() {
    let server = TestServer::stomp(|c| c.settings.api.keys = vec!["k".repeat(20)]).await;
    let api = server.api();
    let (status, doc) = api.get("/api/openapi.json", None).await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "TaskPulse");
    let documented = doc["paths"].as_object().unwrap();

    // Router -> document: whatever is routed is documented, or is a protocol.
    for path in routed_paths() {
        assert!(
            documented.contains_key(&path) || NOT_REST.contains(&path.as_str()),
            "{path} is routed but not in the OpenAPI document"
        );
    }
    for expected in [
        "/api/tasks",
        "/api/tasks/{taskNo}/events",
        "/api/publish",
        "/healthz",
        "/readyz",
        "/metrics",
        "/sse/tasks",
        "/api/admin/stats",
        "/api/openapi.json",
    ] {
        assert!(documented.contains_key(expected), "{expected} missing");
    }

    // Document -> router: every operation reaches its handler (not the catch-all 404, not 405),
    // and every 4xx it documents uses the error schema.
    let http = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in documented {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else { continue };
            operations += 1;
            let url = api.url(&path.replace("{taskNo}", &"0".repeat(32)));
            let response = http.request(method.clone(), url).send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert!(
                !body.contains("no API endpoint at") && !body.contains("no endpoint at"),
                "{method} {path} is documented but not routed: {status} {body}"
            );
            for (code, answer) in operation["responses"].as_object().unwrap() {
                if code.starts_with('4') || code == "503" && path != "/readyz" {
                    let schema = &answer["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema,
                        &Value::String("#/components/schemas/ApiError".into()),
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
    assert!(operations >= 20, "{operations} operations");
    for scheme in ["bearer", "apiKey", "metricsToken"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object(), "{scheme}");
    }
    server.stop().await;
}
