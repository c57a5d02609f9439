//! `weft-echo grpc HOST:PORT …`: a gRPC client (h2c) of `weft.echo.v1.Echo`, usable from any
//! pod netns. It prints one JSON object per reply, `{"pod", "message", "metadata"}` with the
//! metadata as the server received it (never what it sent); on a status other than OK it
//! prints `{"grpcStatus": N, "grpcMessage": …}` and exits with N. `--method Health` and
//! `--method Reflection` ask the server's health and reflection services instead.

use std::{process::ExitCode, str::FromStr as _, time::Duration};

use anyhow::Context as _;
use serde_json::json;
use tonic::{
    metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap},
    transport::{Channel, Endpoint},
    Code, Request, Status,
};

use crate::pb::{echo_client::EchoClient, EchoReply, EchoRequest};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Method {
    /// Unary `weft.echo.v1.Echo/Echo`, once per message.
    #[value(name = "Echo")]
    Echo,
    /// Bidirectional `weft.echo.v1.Echo/Stream`: every message on one stream.
    #[value(name = "Stream")]
    Stream,
    /// `grpc.health.v1.Health/Check` of `--service` (the server as a whole by default);
    /// prints `{"status": …}`.
    #[value(name = "Health")]
    Health,
    /// Server reflection (v1) `ListServices`; prints `{"services": [...]}`.
    #[value(name = "Reflection")]
    Reflection,
}

/// `weft-echo grpc`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "weft-echo grpc",
    about = "A gRPC client of weft.echo.v1.Echo (h2c)"
)]
pub struct Args {
    /// The server, `HOST:PORT` (a Service VIP, a pod IP).
    pub target: String,
    #[arg(long, value_enum, default_value = "Echo")]
    pub method: Method,
    /// The `:authority` to send (default: HOST:PORT).
    #[arg(long)]
    pub authority: Option<String>,
    /// Request metadata `key:value`, repeatable.
    #[arg(short = 'H', value_name = "K:V")]
    pub metadata: Vec<String>,
    /// The message to send; with `--count` above 1 the messages are numbered (`TEXT 1`, …).
    #[arg(long, default_value = "hello")]
    pub message: String,
    /// How many messages: Echo makes that many calls, Stream sends them on one stream.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// The service whose health `--method Health` asks.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds each call may take.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let channel = channel(&args)?;
    let metadata = parse_metadata(&args.metadata)?;
    let result = match args.method {
        Method::Echo => echo(channel, &args, &metadata).await,
        Method::Stream => stream(channel, &args, &metadata).await,
        Method::Health => health(channel, &args, &metadata).await,
        Method::Reflection => reflection(channel, &metadata).await,
    };
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) => failed(&status),
    })
}

/// The channel the clients call through: an HTTP answer that is not gRPC (a proxy's 404 or
/// 503 with a body) becomes the status gRPC's HTTP mapping gives it, as grpc-go and grpcio
/// read it, instead of a body tonic cannot decode.
type Transport = tower::util::MapResponse<Channel, fn(Answer) -> Answer>;
type Answer = http::Response<tonic::body::Body>;

/// A lazy h2c channel: a server that cannot be reached is a call's UNAVAILABLE, as the
/// contract's exit status wants.
fn channel(args: &Args) -> anyhow::Result<Transport> {
    let mut endpoint = Endpoint::from_shared(format!("http://{}", args.target))
        .with_context(|| format!("target {}", args.target))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(args.timeout));
    if let Some(authority) = &args.authority {
        let origin = format!("http://{authority}")
            .parse()
            .with_context(|| format!("authority {authority}"))?;
        endpoint = endpoint.origin(origin);
    }
    let map: fn(Answer) -> Answer = http_answer_as_grpc;
    Ok(tower::ServiceBuilder::new()
        .map_response(map)
        .service(endpoint.connect_lazy()))
}

/// A non-200 answer without `grpc-status`, as a trailers-only gRPC answer with the code of
/// <https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md>.
fn http_answer_as_grpc(answer: Answer) -> Answer {
    let status = answer.status();
    if status == http::StatusCode::OK || answer.headers().contains_key("grpc-status") {
        return answer;
    }
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    let mut mapped = http::Response::new(tonic::body::Body::empty());
    let headers = mapped.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    if let Ok(message) = http::HeaderValue::from_str(&format!("HTTP status {status}")) {
        headers.insert("grpc-message", message);
    }
    mapped
}

fn parse_metadata(pairs: &[String]) -> anyhow::Result<MetadataMap> {
    let mut map = MetadataMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once(':')
            .with_context(|| format!("-H {pair}: want key:value"))?;
        let key = AsciiMetadataKey::from_str(key.trim())
            .with_context(|| format!("-H {pair}: not an ASCII metadata key"))?;
        let value = AsciiMetadataValue::from_str(value.trim())
            .with_context(|| format!("-H {pair}: not an ASCII metadata value"))?;
        map.append(key, value);
    }
    Ok(map)
}

fn request<T>(message: T, metadata: &MetadataMap) -> Request<T> {
    let mut request = Request::new(message);
    *request.metadata_mut() = metadata.clone();
    request
}

fn messages(args: &Args) -> Vec<EchoRequest> {
    if args.count == 1 {
        return vec![EchoRequest {
            message: args.message.clone(),
        }];
    }
    (1..=args.count)
        .map(|i| EchoRequest {
            message: format!("{} {i}", args.message),
        })
        .collect()
}

/// One reply as printed, its fields in the contract's order.
#[derive(serde::Serialize)]
struct Printed<'a> {
    pod: &'a str,
    message: &'a str,
    metadata: &'a std::collections::BTreeMap<String, String>,
}

/// A status other than OK as printed.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Failed<'a> {
    grpc_status: i32,
    grpc_message: &'a str,
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("weft-echo grpc: {e}"),
    }
}

fn print_reply(reply: &EchoReply) {
    print_json(&Printed {
        pod: &reply.pod,
        message: &reply.message,
        metadata: &reply.metadata,
    });
}

async fn echo(channel: Transport, args: &Args, metadata: &MetadataMap) -> Result<(), Status> {
    let mut client = EchoClient::new(channel);
    for message in messages(args) {
        let reply = client.echo(request(message, metadata)).await?;
        print_reply(reply.get_ref());
    }
    Ok(())
}

async fn stream(channel: Transport, args: &Args, metadata: &MetadataMap) -> Result<(), Status> {
    let mut client = EchoClient::new(channel);
    let outgoing = tokio_stream::iter(messages(args));
    let mut replies = client
        .stream(request(outgoing, metadata))
        .await?
        .into_inner();
    while let Some(reply) = replies.message().await? {
        print_reply(&reply);
    }
    Ok(())
}

async fn health(channel: Transport, args: &Args, metadata: &MetadataMap) -> Result<(), Status> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let mut client = HealthClient::new(channel);
    let check = tonic_health::pb::HealthCheckRequest {
        service: args.service.clone(),
    };
    let reply = client.check(request(check, metadata)).await?.into_inner();
    let status = ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", json!({"status": status.as_str_name()}));
    Ok(())
}

async fn reflection(channel: Transport, metadata: &MetadataMap) -> Result<(), Status> {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(request(tokio_stream::iter([ask]), metadata))
        .await?
        .into_inner();
    let mut services = Vec::new();
    while let Some(answer) = answers.message().await? {
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                services.extend(list.service.into_iter().map(|s| s.name));
            }
            Some(MessageResponse::ErrorResponse(e)) => {
                return Err(Status::new(Code::from(e.error_code), e.error_message));
            }
            _ => {}
        }
    }
    services.sort();
    println!("{}", json!({"services": services}));
    Ok(())
}

/// The status line, and the exit code that is its number.
fn failed(status: &Status) -> ExitCode {
    let code = status.code() as i32;
    print_json(&Failed {
        grpc_status: code,
        grpc_message: status.message(),
    });
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
