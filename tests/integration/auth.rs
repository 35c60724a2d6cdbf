//! Credentials reach the server on HTTP and on the WebSocket upgrade, and no `Origin` is sent
//! (ComfyUI answers 403 to a mismatched one). A recording stand-in server on loopback checks
//! what actually arrives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use plasma_batch::comfy::ws::WsConnection;
use plasma_batch::comfy::{ComfyClient, http_client};

/// (path, Authorization, Origin) of each request.
type Request = (String, Option<String>, Option<String>);

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

impl Seen {
    fn record(&self, path: &str, headers: &HeaderMap) {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.0
            .lock()
            .unwrap()
            .push((path.to_owned(), get("authorization"), get("origin")));
    }
}

async fn stats(State(seen): State<Seen>, headers: HeaderMap) -> impl IntoResponse {
    seen.record("system_stats", &headers);
    axum::Json(serde_json::json!({"system": {"comfyui_version": "0.8.0"}, "devices": []}))
}

async fn ws(
    State(seen): State<Seen>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse {
    seen.record("ws", &headers);
    upgrade.on_upgrade(|mut socket| async move {
        let first = r#"{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}"#;
        let _ = socket.send(Message::Text(first.into())).await;
        while let Some(Ok(_)) = socket.recv().await {}
    })
}

async fn serve() -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/prefix/system_stats", get(stats))
        .route("/prefix/ws", get(ws))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("127.0.0.1:{}", addr.port()), seen)
}

#[tokio::test]
async fn bearer_token_and_basic_auth_go_on_http_and_websocket_without_origin() {
    let (host, seen) = serve().await;
    let bearer = ComfyClient::with_token(
        &format!("http://{host}/prefix/"),
        http_client(),
        Some("s3cret".into()),
    )
    .unwrap();
    let basic = ComfyClient::with_token(
        &format!("http://ann:p%40ss@{host}/prefix"),
        http_client(),
        None,
    )
    .unwrap();
    for client in [&bearer, &basic] {
        assert_eq!(
            client.system_stats().await.unwrap()["system"]["comfyui_version"],
            "0.8.0"
        );
        let ws = WsConnection::connect(client, "me", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ws.sid, "me");
        ws.close().await;
    }
    let seen = seen.0.lock().unwrap().clone();
    let expected = [
        ("system_stats", Some("Bearer s3cret")),
        ("ws", Some("Bearer s3cret")),
        ("system_stats", Some("Basic YW5uOnBAc3M=")),
        ("ws", Some("Basic YW5uOnBAc3M=")),
    ];
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    for ((path, auth, origin), (want_path, want_auth)) in seen.iter().zip(expected) {
        assert_eq!(path, want_path);
        assert_eq!(auth.as_deref(), want_auth, "{path}");
        assert_eq!(origin, &None, "an Origin header was sent to {path}");
    }
    // Credentials never appear in what the client prints.
    assert_eq!(basic.url(), format!("http://{host}/prefix"));
}
