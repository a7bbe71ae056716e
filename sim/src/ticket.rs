//! `POST /v1.0/gateway/connections/open`: records the request, applies faults, checks the
//! credentials and issues a single-use ticket (docs/protocol.md §1.1, §1.2).
//!
//! The client secret is compared and kept in the recorded request, never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::events::{GatewayEvent, Secret, Subscription, TicketRequest};
use super::faults::{self, TicketFaultKind};
use super::frames::new_uuid;
use super::http::{Body, full, json_response};
use super::state::{GatewayCore, TicketState};

/// Larger ticket requests are refused; real ones are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
/// Used or expired tickets are remembered this long (so a late reuse gets 403, not 401).
const TICKET_MEMORY: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenBody {
    client_id: String,
    client_secret: String,
    #[serde(default)]
    subscriptions: Option<Vec<Subscription>>,
    #[serde(default)]
    ua: Option<String>,
    #[serde(default)]
    local_ip: Option<String>,
    #[serde(default)]
    extras: Option<Value>,
}

/// Handles one ticket request.
pub(crate) async fn open(shared: &Arc<GatewayCore>, req: Request<Incoming>) -> Response<Body> {
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let accept = header(header::ACCEPT);
    let content_type = header(header::CONTENT_TYPE);
    let user_agent = header(header::USER_AGENT);
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return malformed(shared, format!("unreadable body: {e}")),
    };
    let body: OpenBody = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) => return malformed(shared, format!("bad JSON: {e}")),
    };
    let request = TicketRequest {
        client_id: body.client_id,
        client_secret: Secret::new(body.client_secret),
        subscriptions: body.subscriptions.unwrap_or_default(),
        ua: body.ua,
        local_ip: body.local_ip,
        extras: body.extras,
        accept,
        content_type,
        user_agent,
    };
    info!(
        client_id = %request.client_id,
        ua = ?request.ua,
        subscriptions = request.subscriptions.len(),
        "ticket requested"
    );
    let (fault, authorised) = {
        let mut st = shared.state();
        st.ticket_requests.push(request.clone());
        let fault = faults::take_one(&mut st.ticket_fault);
        let authorised = request.client_id == shared.config.client_id
            && request.client_secret.expose() == shared.config.client_secret;
        (fault, authorised)
    };
    shared.emit(GatewayEvent::TicketRequested(Box::new(request)));

    match fault.map(|f| f.kind) {
        Some(TicketFaultKind::Hang) => {
            info!("ticket request hung on purpose");
            shared.emit(GatewayEvent::TicketHung);
            shared.cancel.cancelled().await;
            return error(shared, 503, None);
        }
        Some(TicketFaultKind::Status {
            status,
            retry_after,
        }) => return error(shared, status, retry_after),
        Some(TicketFaultKind::Body { status, body }) => {
            info!(status, "ticket request answered with an injected body");
            shared.emit(GatewayEvent::TicketOddAnswer { status });
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = Response::new(full(body));
            *resp.status_mut() = code;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html;charset=utf-8"),
            );
            return resp;
        }
        Some(TicketFaultKind::Unfinished) => {
            info!("ticket request answered with a body that never ends, on purpose");
            shared.emit(GatewayEvent::TicketUnfinished);
            return unfinished(shared);
        }
        None => {}
    }
    if !authorised {
        warn!("ticket refused: wrong clientId or clientSecret");
        return error(shared, 401, None);
    }
    let ticket = new_uuid();
    {
        let mut st = shared.state();
        let now = Instant::now();
        let keep = shared.config.ticket_ttl + TICKET_MEMORY;
        st.tickets
            .retain(|_, t| now.duration_since(t.issued) < keep);
        st.tickets.insert(
            ticket.clone(),
            TicketState {
                issued: now,
                used: false,
            },
        );
        st.tickets_issued += 1;
    }
    info!("ticket issued");
    shared.emit(GatewayEvent::TicketIssued {
        ticket: ticket.clone(),
    });
    json_response(
        StatusCode::OK,
        &json!({"endpoint": shared.endpoint, "ticket": ticket}),
    )
}

/// 200 with the first bytes of a JSON answer, then nothing until the gateway shuts down.
fn unfinished(shared: &GatewayCore) -> Response<Body> {
    use futures_util::StreamExt;
    let cancel = shared.cancel.clone();
    let start = futures_util::stream::once(async {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
            b"{\"endpoint\":\"",
        )))
    });
    // Ends (cut short) only when the gateway stops, so no task outlives it.
    let never = futures_util::stream::once(async move {
        cancel.cancelled_owned().await;
        Ok(hyper::body::Frame::data(Bytes::new()))
    });
    let body = BodyExt::boxed(http_body_util::StreamBody::new(start.chain(never)));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    resp
}

fn malformed(shared: &GatewayCore, error: String) -> Response<Body> {
    warn!(%error, "malformed ticket request");
    shared.emit(GatewayEvent::TicketRequestMalformed { error });
    let body = json!({
        "requestid": new_uuid().to_uppercase(),
        "code": "invalidParameter",
        "message": "请求参数错误",
    });
    json_response(StatusCode::BAD_REQUEST, &body)
}

fn error(shared: &GatewayCore, status: u16, retry_after: Option<Duration>) -> Response<Body> {
    info!(
        status,
        ?retry_after,
        "ticket request answered with an error"
    );
    shared.emit(GatewayEvent::TicketRejected { status });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(code, &faults::error_body(status));
    if let Some(after) = retry_after
        && let Ok(v) = HeaderValue::from_str(&after.as_secs().to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}
