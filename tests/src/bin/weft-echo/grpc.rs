//! The echo pods' gRPC side (SPEC "The demo playground"): `weft.echo.v1.Echo` (`Echo` unary,
//! `Stream` bidirectional), each reply carrying the pod's name, the message and the request
//! metadata as received; gRPC health (`SERVING`) and server reflection (v1 and v1alpha). A
//! call carrying `x-echo-fail-on: <this pod's name>` fails with UNAVAILABLE, as the HTTP side
//! answers 503.

use std::{collections::BTreeMap, net::SocketAddr, pin::Pin};

use anyhow::Context as _;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{metadata::MetadataMap, Request, Response, Status, Streaming};

use crate::pb::{
    echo_server::{Echo, EchoServer},
    EchoReply, EchoRequest,
};

/// The `:authority` a call arrived with, put in its extensions by [`serve`]'s request layer
/// (tonic's `Request` keeps no URI).
#[derive(Clone, Debug)]
struct Authority(String);

/// The echo service of one pod.
#[derive(Debug)]
struct EchoService {
    pod: String,
}

impl EchoService {
    /// What a reply carries as the request's metadata: every ASCII entry as received (a key
    /// sent more than once keeps its values comma-joined), and the `:authority`.
    fn received<T>(request: &Request<T>) -> BTreeMap<String, String> {
        let mut seen = metadata(request.metadata());
        if let Some(Authority(authority)) = request.extensions().get::<Authority>() {
            seen.insert(":authority".into(), authority.clone());
        }
        seen
    }

    /// UNAVAILABLE when the call asks this pod to fail (one of its `x-echo-fail-on` values
    /// is this pod's name).
    fn check_fail_on(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if metadata
            .get_all("x-echo-fail-on")
            .iter()
            .any(|v| v.as_encoded_bytes() == self.pod.as_bytes())
        {
            return Err(Status::unavailable(format!(
                "{} fails calls carrying x-echo-fail-on: {}",
                self.pod, self.pod
            )));
        }
        Ok(())
    }
}

fn metadata(map: &MetadataMap) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for entry in map.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
            let Ok(value) = value.to_str() else { continue };
            seen.entry(key.as_str().to_owned())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_owned());
        }
    }
    seen
}

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.check_fail_on(request.metadata())?;
        let metadata = Self::received(&request);
        println!("grpc Echo");
        Ok(Response::new(EchoReply {
            pod: self.pod.clone(),
            message: request.into_inner().message,
            metadata,
        }))
    }

    type StreamStream = Replies;

    async fn stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        self.check_fail_on(request.metadata())?;
        let metadata = Self::received(&request);
        println!("grpc Stream");
        let pod = self.pod.clone();
        let replies = request.into_inner().map(move |message| {
            message.map(|m| EchoReply {
                pod: pod.clone(),
                message: m.message,
                metadata: metadata.clone(),
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Serves the echo service, health and reflection on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, pod: String) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EchoServer<EchoService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("reflection v1")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("reflection v1alpha")?;
    let authority = tower::ServiceBuilder::new().map_request(|mut req: http::Request<_>| {
        if let Some(authority) = req.uri().authority().map(ToString::to_string) {
            req.extensions_mut().insert(Authority(authority));
        }
        req
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .layer(authority)
        .add_service(EchoServer::new(EchoService { pod }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming(incoming)
        .await
        .context("serving gRPC")
}

/// Where gRPC listens by default: port 9090 of the address HTTP listens on.
pub fn default_addr(http: SocketAddr) -> SocketAddr {
    SocketAddr::new(http.ip(), 9090)
}
