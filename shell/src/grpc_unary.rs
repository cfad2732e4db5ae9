//! A lean gRPC unary client over one HTTP/2 connection, for the key-value bench's load
//! generator and for the batches a node sends its peers' replicas. tonic's `Channel` hands
//! every call to a buffer task, and hyper's client to a task of its own per request, before
//! h2 sees it: on two shared cores those hops cost the load generator about as much CPU as a
//! replica spends on a read, and a coordinator pays them for every peer batch. Here the
//! caller drives its h2 stream itself; only the connection has a task. Both systems of a
//! bench comparison are driven through it alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::{Code, Status};

/// The largest answer read, as tonic's `max_decoding_message_size` (a peer's anti-entropy
/// and batch answers stay far below it).
pub const MAX_ANSWER: usize = 64 << 20;

/// One HTTP/2 connection to a gRPC server, shared by concurrent calls (clone it).
#[derive(Clone)]
pub struct UnaryClient {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
    /// Set once the connection's task has ended (the server closed it, or it broke).
    closed: Arc<AtomicBool>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("{what}: {e}"))
}

impl UnaryClient {
    /// Connects to `url` (`http://host:port`); plain-text HTTP/2, as tonic's clients here.
    pub async fn connect(url: &str) -> Result<UnaryClient, Status> {
        let authority = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/').to_owned();
        let tcp = tokio::net::TcpStream::connect(&authority).await.map_err(|e| unavailable(&authority, e))?;
        tcp.set_nodelay(true).map_err(|e| unavailable(&authority, e))?;
        // Writes gathered until h2 flushes, and a flush deferred one scheduler pass, as on
        // the server side: the requests of clients sharing the connection leave together.
        let tcp = crate::net_io::OneWrite::new(tcp);
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 22)
            .handshake(tcp)
            .await
            .map_err(|e| unavailable(&authority, e))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gRPC connection closed");
            }
            ended.store(true, Ordering::Release);
        });
        Ok(UnaryClient { send, authority, closed })
    }

    /// Whether the connection is still up: once the server has closed it (a restart, say),
    /// a call would fail without being sent, so a caller connects again first.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Calls `path` (`/package.Service/Method`) with `req`; the answer decoded, or the
    /// server's status.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        self.call_with(path, req, None).await
    }

    /// [`UnaryClient::call`] with one more header (a peer's cluster id, say).
    pub async fn call_with<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        req: &Req,
        header: Option<(&http::HeaderName, &http::HeaderValue)>,
    ) -> Result<Resp, Status> {
        let len = req.encoded_len();
        let mut frame = BytesMut::with_capacity(5 + len);
        frame.put_u8(0);
        frame.put_u32(u32::try_from(len).map_err(|_| Status::invalid_argument("request over 4 GiB"))?);
        req.encode(&mut frame).map_err(|e| Status::internal(e.to_string()))?;
        let mut head = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{}{path}", self.authority))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers");
        if let Some((name, value)) = header {
            head = head.header(name, value);
        }
        let head = head.body(()).map_err(|e| Status::internal(e.to_string()))?;
        let mut send = self.send.clone().ready().await.map_err(|e| unavailable("connection", e))?;
        let (answer, mut stream) = send.send_request(head, false).map_err(|e| unavailable("request", e))?;
        stream.send_data(frame.freeze(), true).map_err(|e| unavailable("request body", e))?;
        let (parts, mut body) = answer.await.map_err(|e| unavailable("answer", e))?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only answer (an error) carries its status in the headers.
        if let Some(err) = status_of(&parts.headers) {
            return Err(err);
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| unavailable("answer body", e))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if buf.len() + chunk.len() > MAX_ANSWER + 5 {
                return Err(Status::resource_exhausted(format!("the answer is over {MAX_ANSWER} bytes")));
            }
            buf.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(|e| unavailable("trailers", e))?;
        if let Some(err) = trailers.as_ref().and_then(status_of) {
            return Err(err);
        }
        if buf.len() < 5 || buf[0] != 0 {
            return Err(Status::internal("the answer is not one uncompressed gRPC message"));
        }
        let mut msg = buf.freeze();
        msg.advance(1);
        let n = msg.get_u32() as usize;
        if msg.len() != n {
            return Err(Status::internal(format!("the answer's message is {} bytes, its prefix says {n}", msg.len())));
        }
        Resp::decode(msg).map_err(|e| Status::internal(format!("decoding the answer: {e}")))
    }
}

/// The gRPC status in `headers`, when it is not OK.
fn status_of(headers: &http::HeaderMap) -> Option<Status> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    if code == 0 {
        return None;
    }
    let msg = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
    Some(Status::new(Code::from(code), msg.to_owned()))
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus};

    use super::*;

    /// A loopback port to serve on: its URL, and its connections for a tonic server.
    async fn listen() -> (String, tonic::transport::server::TcpIncoming) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        (url, tonic::transport::server::TcpIncoming::from(listener))
    }

    /// A tonic server with gRPC health on a loopback port; its URL.
    async fn health_server() -> String {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("up", tonic_health::ServingStatus::Serving).await;
        let (url, incoming) = listen().await;
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        url
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_decodes_the_answer_and_an_error_keeps_its_code_and_message() {
        let url = health_server().await;
        let c = UnaryClient::connect(&url).await.expect("connect");
        let path = "/grpc.health.v1.Health/Check";
        let up: HealthCheckResponse =
            c.call(path, &HealthCheckRequest { service: "up".into() }).await.expect("known service");
        assert_eq!(up.status, ServingStatus::Serving as i32);
        // Answered trailers-only, with the status in the headers.
        let err = c.call::<_, HealthCheckResponse>(path, &HealthCheckRequest { service: "nope".into() }).await;
        let err = err.expect_err("an unknown service is NOT_FOUND");
        assert_eq!(err.code(), Code::NotFound);
        assert!(!err.message().is_empty());
        let err = c.call::<_, HealthCheckResponse>("/no.Such/Method", &HealthCheckRequest::default()).await;
        assert_eq!(err.expect_err("no such method").code(), Code::Unimplemented);
        // Calls share the connection concurrently.
        let up = HealthCheckRequest { service: "up".into() };
        let calls = (0..16).map(|_| c.call::<_, HealthCheckResponse>(path, &up));
        for r in futures_util::future::join_all(calls).await {
            assert_eq!(r.expect("concurrent call").status, ServingStatus::Serving as i32);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_with_a_header_carries_it() {
        let (_reporter, service) = tonic_health::server::health_reporter();
        // Refuses calls without the header, as a peer refuses calls without a cluster id.
        let service =
            tonic::service::interceptor::InterceptedService::new(service, |req: tonic::Request<()>| {
                match req.metadata().get("tessera-test").map(|v| v.to_str()) {
                    Some(Ok("yes")) => Ok(req),
                    _ => Err(Status::permission_denied("no tessera-test header")),
                }
            });
        let (url, incoming) = listen().await;
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        let c = UnaryClient::connect(&url).await.expect("connect");
        let path = "/grpc.health.v1.Health/Check";
        let without = c.call::<_, HealthCheckResponse>(path, &HealthCheckRequest::default()).await;
        assert_eq!(without.expect_err("refused").code(), Code::PermissionDenied);
        let (name, value) = (http::HeaderName::from_static("tessera-test"), http::HeaderValue::from_static("yes"));
        let any = HealthCheckRequest::default();
        let with = c.call_with::<_, HealthCheckResponse>(path, &any, Some((&name, &value))).await;
        assert_eq!(with.expect("the header passes").status, ServingStatus::Serving as i32);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_server_closes_shows_as_closed() {
        let (_reporter, service) = tonic_health::server::health_reporter();
        let (url, incoming) = listen().await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
        );
        let c = UnaryClient::connect(&url).await.expect("connect");
        assert!(c.is_open());
        let _ = stop.send(());
        server.await.expect("server task").expect("server stops");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while c.is_open() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!c.is_open(), "the client still thinks the connection is up");
        let any = HealthCheckRequest::default();
        let err = c.call::<_, HealthCheckResponse>("/grpc.health.v1.Health/Check", &any).await;
        assert_eq!(err.expect_err("closed").code(), Code::Unavailable);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_server_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = UnaryClient::connect(&format!("http://{addr}")).await.err().expect("nothing listens");
        assert_eq!(err.code(), Code::Unavailable);
    }
}
