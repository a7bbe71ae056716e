//! Liveness of the DingTalk connection over real sockets against the fake gateway, with
//! sub-second timers: a zombie link (TCP open, nothing answered) is found within
//! ping_interval + pong_timeout, any inbound frame counts as life, and the socket options
//! (SO_KEEPALIVE, TCP_USER_TIMEOUT, TCP_NODELAY) are read back from the live socket.

mod common;

use common::*;
use dingtalk_streamd_sim::GatewayEvent;
use std::time::Duration;

async fn zombie_case(ping: Duration, pong: Duration) {
    let gw = gateway(false).await;
    let extra = keepalive(&format!("{}ms", ms(ping)), &format!("{}ms", ms(pong)))
        + &reconnect("50ms", "400ms", "2s");
    let d = Daemon::start(&gw, &extra).await;
    let c1 = gw.wait_connected(1, WAIT).await.unwrap()[0];
    // Let a ping/pong round happen first so the zombie starts mid-cycle.
    gw.wait_for(
        |e| matches!(e, GatewayEvent::ClientWsPing { conn } if *conn == c1),
        WAIT,
    )
    .await
    .unwrap();
    let mut cur = gw.subscribe();
    gw.set_zombie(c1, true).unwrap();
    let z = cur
        .wait_for(
            |e| matches!(e, GatewayEvent::ZombieSet { on: true, .. }),
            WAIT,
        )
        .await
        .unwrap();
    let t = cur
        .wait_for(|e| matches!(e, GatewayEvent::TicketRequested(_)), WAIT)
        .await
        .unwrap();
    let c = cur.wait_for(is_connected, WAIT).await.unwrap();
    let detected = t.at - z.at;
    // The reconnect starts after a random 0..initial_delay (50 ms) once the pong deadline passes.
    let bound = ping + pong + Duration::from_millis(50) + SLACK;
    assert!(
        detected <= bound,
        "zombie found after {detected:?}, bound {bound:?}"
    );
    assert!(
        detected >= pong,
        "reconnected after {detected:?}: before any pong deadline could pass"
    );
    assert_ne!(connected_conn(&c.event), c1);
    let st = d.status().await;
    assert_eq!(st["link"]["last_cause"], "pong_timeout", "{st}");
    assert_eq!(st["state"], "connected", "{st}");
    assert_eq!(st["link"]["connections_opened"], 2, "{st}");
    eprintln!(
        "zombie with ping {ping:?} + pong {pong:?}: new ticket requested {detected:?} after the link went silent"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn zombie_is_detected_within_ping_interval_plus_pong_timeout() {
    zombie_case(Duration::from_millis(300), Duration::from_millis(200)).await;
}

#[tokio::test]
async fn zombie_is_detected_at_another_setting() {
    zombie_case(Duration::from_millis(800), Duration::from_millis(150)).await;
}

/// Over an in-memory pipe: a peer that never answers pings but keeps sending
/// frames is alive; once it falls silent, the pong deadline ends the connection.
#[tokio::test]
async fn any_inbound_frame_counts_as_life_and_silence_is_a_pong_timeout() {
    use dingtalk_streamd::stream::connection::{self, ConnCtx, End, Liveness};
    use dingtalk_streamd::stream::{ConnId, StreamStats};
    use futures_util::SinkExt;
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::Message;

    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let server =
        tokio::spawn(async move { tokio_tungstenite::accept_async(server_io).await.unwrap() });
    let (client, _) = tokio_tungstenite::client_async("ws://gw.test/connect", client_io)
        .await
        .unwrap();
    let mut server = server.await.unwrap();

    let (_live_tx, live_rx) = tokio::sync::watch::channel(Liveness {
        ping_interval: Duration::from_millis(300),
        pong_timeout: Duration::from_millis(150),
        commit_stall: Duration::from_secs(30),
    });
    let (events, _events_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = ConnCtx {
        id: ConnId(1),
        liveness: live_rx,
        relay: dingtalk_streamd::relay::Relay::detached(),
        events,
        cancel: tokio_util::sync::CancellationToken::new(),
        stats: Arc::new(StreamStats::default()),
        observed: Arc::default(),
        progress: dingtalk_streamd::notify::Progress::new(),
        fragments: Default::default(),
    };
    let mut conn = tokio::spawn(connection::run(client, ctx));
    // The server never reads (so never pongs) but sends an unknown SYSTEM frame every 30 ms,
    // for 5 ping intervals.
    let frame = r#"{"specVersion":"1.0","type":"SYSTEM","headers":{"topic":"KEEPALIVE","messageId":"m1","contentType":"application/json","time":"1"},"data":"{}"}"#;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        server.send(Message::text(frame)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !conn.is_finished(),
            "connection ended although frames kept arriving"
        );
    }
    let silent_at = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), &mut conn)
        .await
        .expect("pong deadline fired")
        .unwrap();
    assert_eq!(end, End::PongTimeout);
    let took = silent_at.elapsed();
    assert!(
        took <= Duration::from_millis(450) + SLACK,
        "ended {took:?} after the last frame"
    );
    drop(server);
}

const CUSTOM_KEEPALIVE: &str = "keepalive:\n  ping_interval: 2s\n  pong_timeout: 1s\n  tcp_keepalive_idle: 7s\n  tcp_keepalive_interval: 3s\n  tcp_keepalive_count: 4\n  tcp_user_timeout: 12500ms\n";

fn expected_socket() -> serde_json::Value {
    serde_json::json!({
        "keepalive": true,
        "keepalive_idle_s": 7,
        "keepalive_interval_s": 3,
        "keepalive_count": 4,
        "user_timeout_ms": 12500,
        "nodelay": true,
    })
}

/// The options are read back with getsockopt from the daemon's live connection (status JSON).
#[tokio::test]
async fn socket_options_of_the_live_connection_are_in_status() {
    let gw = gateway(true).await;
    let d = Daemon::start(&gw, CUSTOM_KEEPALIVE).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let st = d
        .status_until("connected", |s| s["state"] == "connected")
        .await;
    assert_eq!(st["link"]["socket"], expected_socket(), "{st}");
    d.stop().await.0.unwrap();
}

/// The same through the library: establish a WebSocket with the daemon's code and read the
/// options back from the live TCP socket underneath it.
#[tokio::test]
async fn socket_options_read_back_from_an_established_websocket() {
    use dingtalk_streamd::gateway::proxy::ProxySettings;
    use dingtalk_streamd::gateway::ticket::TicketClient;
    use dingtalk_streamd::gateway::tls;
    use dingtalk_streamd::stream::connect::{ConnectParams, establish};
    use dingtalk_streamd::stream::socket;
    use tokio_tungstenite::MaybeTlsStream;

    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, CUSTOM_KEEPALIVE);
    let loaded = dingtalk_streamd::config::Config::load(&p.config).unwrap();
    let c = &loaded.config;
    let proxies = ProxySettings::from_env(None);
    let http_tls = tls::client_config(None, &[b"http/1.1"]).unwrap();
    let ticket = TicketClient::new(c, loaded.secret.clone(), http_tls, &proxies).unwrap();
    let params = ConnectParams {
        keepalive: c.keepalive.clone(),
        timeout: Duration::from_secs(5),
        tls: tls::client_config(None, &[]).unwrap(),
        proxies,
        max_frame_bytes: 1 << 20,
    };
    let t = ticket.fetch().await.unwrap();
    let est = establish(&t, &params).await.unwrap();
    let MaybeTlsStream::Plain(tcp) = est.ws.get_ref().get_ref() else {
        panic!("expected plain ws")
    };
    let live = socket::report(tcp).unwrap();
    assert_eq!(serde_json::to_value(&live).unwrap(), expected_socket());
    assert_eq!(live, est.socket);
    gw.wait_connected(1, WAIT).await.unwrap();
}
