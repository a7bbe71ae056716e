//! Two DingTalk OpenAPI endpoints, so a client's API traffic can be tested offline:
//!
//! - `POST /v1.0/oauth2/accessToken` with `{"appKey","appSecret"}`: the gateway's client id
//!   and secret get `{"accessToken": <fresh>, "expireIn": <token_ttl in seconds>}`; anything
//!   else gets 400 in DingTalk's error shape.
//! - `POST /v1.0/robot/oToMessages/batchSend` (the robot's one-to-one send): it needs a token
//!   issued here and not expired in `x-acs-dingtalk-access-token` (else 401
//!   `InvalidAuthentication`); the body is recorded ([`super::FakeGateway::robot_sends`]) and
//!   answered with a `processQueryKey`.
//!
//! Tokens are recorded for assertions and never logged.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::events::GatewayEvent;
use super::frames::{new_uuid, random_hex};
use super::http::{Body, json_response};
use super::state::GatewayCore;

/// Path of the token endpoint.
pub(crate) const TOKEN_PATH: &str = "/v1.0/oauth2/accessToken";
/// Path of the robot's batch send.
pub(crate) const BATCH_SEND_PATH: &str = "/v1.0/robot/oToMessages/batchSend";
/// Larger bodies are refused.
const MAX_BODY: usize = 1024 * 1024;

/// One robot message a client sent through [`BATCH_SEND_PATH`].
#[derive(Debug, Clone)]
pub struct RobotSend {
    /// When it arrived.
    pub at: Instant,
    /// The `x-acs-dingtalk-access-token` it carried.
    pub token: String,
    /// The JSON body (`robotCode`, `userIds`, `msgKey`, `msgParam`).
    pub body: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenBody {
    #[serde(default)]
    app_key: String,
    #[serde(default)]
    app_secret: String,
}

async fn body_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "invalidParameter",
                "unreadable body",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "invalidParameter",
            "body is not JSON",
        )
    })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"requestid": new_uuid().to_uppercase(), "code": code, "message": message}),
    )
}

/// `POST /v1.0/oauth2/accessToken`.
pub(crate) async fn access_token(
    shared: &Arc<GatewayCore>,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match body_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let b: TokenBody = serde_json::from_value(body).unwrap_or(TokenBody {
        app_key: String::new(),
        app_secret: String::new(),
    });
    if b.app_key != shared.config.client_id || b.app_secret != shared.config.client_secret {
        warn!("access token refused: wrong appKey or appSecret");
        shared.emit(GatewayEvent::TokenRefused);
        return error(
            StatusCode::BAD_REQUEST,
            "invalidClientSecret",
            "应用凭证无效 (wrong appKey or appSecret)",
        );
    }
    let token = random_hex(32);
    let ttl = shared.config.token_ttl;
    shared
        .state()
        .tokens
        .insert(token.clone(), Instant::now() + ttl);
    info!(expire_in = ttl.as_secs(), "access token issued");
    shared.emit(GatewayEvent::TokenIssued {
        token: token.clone(),
    });
    json_response(
        StatusCode::OK,
        &json!({"accessToken": token, "expireIn": ttl.as_secs()}),
    )
}

/// `POST /v1.0/robot/oToMessages/batchSend`.
pub(crate) async fn batch_send(
    shared: &Arc<GatewayCore>,
    req: Request<Incoming>,
) -> Response<Body> {
    let token = req
        .headers()
        .get("x-acs-dingtalk-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let valid = shared
        .state()
        .tokens
        .get(&token)
        .is_some_and(|until| Instant::now() < *until);
    if !valid {
        warn!("robot send refused: missing, unknown or expired access token");
        return error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthentication",
            "不合法的access_token",
        );
    }
    let body = match body_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    info!("robot message sent");
    let send = RobotSend {
        at: Instant::now(),
        token,
        body,
    };
    shared.state().robot_sends.push(send.clone());
    shared.emit(GatewayEvent::RobotSent(Box::new(send)));
    json_response(
        StatusCode::OK,
        &json!({"processQueryKey": random_hex(24), "invalidStaffIdList": [], "flowControlledStaffIdList": []}),
    )
}
