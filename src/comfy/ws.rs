//! The WebSocket to one ComfyUI server: connect, confirm, read typed frames.
//!
//! `connect` returns only after the server's first `status` frame arrived, so a caller that
//! posts prompts after it knows the server has registered the socket under our client id
//! (the rule "the socket is open BEFORE `POST /prompt`").

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::client::ComfyClient;
use super::error::{ComfyError, error_chain};
use super::protocol::ServerMessage;

/// Full-size PNGs from `SaveImageWebsocket` arrive as one frame; allow large ones.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// An open, confirmed socket.
pub struct WsConnection {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    url: String,
    /// The id the server registered us under (the `sid` of the first frame).
    pub sid: String,
}

/// One thing read from the socket.
#[derive(Debug)]
pub enum WsEvent {
    Message(ServerMessage),
    /// Binary frames (previews) and unparsable text: alive, but nothing to act on.
    Ignored,
    /// The server closed the socket or the connection broke.
    Closed(Option<String>),
}

impl WsConnection {
    /// Open `/ws?clientId=<client_id>` and wait (at most `timeout`) for the first `status`.
    pub async fn connect(
        client: &ComfyClient,
        client_id: &str,
        timeout: Duration,
    ) -> Result<WsConnection, ComfyError> {
        let url = client.ws_url(client_id);
        let display = client.url().to_owned();
        let ws_error = |reason: String| ComfyError::WebSocket {
            url: display.clone(),
            reason,
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ws_error(e.to_string()))?;
        if let Some(auth) = client.authorization() {
            let value = HeaderValue::from_str(&auth).map_err(|e| ws_error(e.to_string()))?;
            request.headers_mut().insert("Authorization", value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let handshake = async {
            let (mut stream, _response) =
                tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                    .await
                    .map_err(|e| ComfyError::Connect {
                        url: display.clone(),
                        path: "ws".to_owned(),
                        reason: error_chain(&e),
                    })?;
            // The first frame is `status` with our `sid`; anything before it is not expected,
            // but skip it rather than fail.
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(ServerMessage::Status { sid: Some(sid), .. }) =
                            ServerMessage::parse(&text)
                        {
                            return Ok(WsConnection {
                                stream,
                                url: display.clone(),
                                sid,
                            });
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(ws_error(error_chain(&e))),
                    None => {
                        return Err(ws_error("closed before the first status frame".to_owned()));
                    }
                }
            }
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| {
                ws_error(format!(
                    "no status frame within {} s of connecting",
                    timeout.as_secs_f64()
                ))
            })?
    }

    /// The next frame. Cancel-safe (it only awaits the stream).
    pub async fn next_event(&mut self) -> WsEvent {
        match self.stream.next().await {
            Some(Ok(Message::Text(text))) => match ServerMessage::parse(&text) {
                Some(message) => WsEvent::Message(message),
                None => WsEvent::Ignored,
            },
            Some(Ok(Message::Close(frame))) => WsEvent::Closed(frame.map(|f| f.reason.to_string())),
            Some(Ok(_)) => WsEvent::Ignored,
            Some(Err(e)) => WsEvent::Closed(Some(error_chain(&e))),
            None => WsEvent::Closed(None),
        }
    }

    /// Send a ping; ComfyUI's aiohttp answers with a pong (autoping).
    pub async fn ping(&mut self) -> Result<(), ComfyError> {
        self.stream
            .send(Message::Ping(Bytes::from_static(b"plasma")))
            .await
            .map_err(|e| ComfyError::WebSocket {
                url: self.url.clone(),
                reason: error_chain(&e),
            })
    }

    /// Close the socket and wait (briefly) for the close to complete, so that a later socket
    /// with the same client id is not unregistered by this one's late close (protocol §1.1).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.stream.close(None).await;
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }
}
