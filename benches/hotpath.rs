//! The instruction-count guard's workload: the path of one message (parse, dedupe keys and
//! line, commit, ACK, fan-out) run inline on one thread through `relay::Inline`, over a fixed,
//! deterministic mix: 90% bot text messages of ~1 KB, 10% events of ~300 B, in commits of 100.
//! `scripts/callgrind-guard` runs it under callgrind, counting only inside `Inline::run`, and
//! compares instructions per message with the committed baseline; run alone it prints how long
//! it took (a sanity check, not a measurement).
//!
//! `cargo bench --bench hotpath -- [MESSAGES] [--no-group]` (default 2000)

use dingtalk_streamd::relay::Inline;
use dingtalk_streamd::spool::{StartAt, Store, StoreOptions};
use std::time::Instant;

/// Messages per commit: fixed, so the work does not depend on timing.
const BATCH: usize = 100;

/// The `i`-th frame of the mix, with ids derived from `i` (no randomness).
fn frame(i: usize) -> String {
    let mid = format!("213661cf_dba_18d5875eda1_{i:08x}");
    if i % 10 == 9 {
        let data = format!(
            "{{\"timeStamp\":\"1685501863357\",\"userId\":[\"015xxxx227\"],\"deptId\":[{i}],\"note\":\"{}\"}}",
            "e".repeat(120)
        );
        serde_json::json!({
            "specVersion": "1.0", "type": "EVENT",
            "headers": {"topic": "*", "messageId": mid, "contentType": "application/json",
                "time": "1683533823336", "eventId": format!("c7c7120f2c07419{i:08x}"),
                "eventBornTime": "1683533823336", "eventCorpId": "ding9f50b15b16741",
                "eventType": "user_add_org", "eventUnifiedAppId": "bbb381b6-f01a-58daac",
                "connectionId": "98d1ea6f-c580-11ee-9a5f-26110c82ff67"},
            "data": data,
        })
        .to_string()
    } else {
        let data = serde_json::json!({
            "conversationId": "cidJ8k4sim0000000000000=", "chatbotCorpId": "dingc53sim0000000000",
            "chatbotUserId": "$:LWCP_v1:$Ye+sim00000000000000000000000000", "msgId": format!("msg{i:020}=="),
            "senderNick": "Sim User", "isAdmin": true, "senderStaffId": "manager807",
            "sessionWebhookExpiredTime": 1769857097744u64, "createAt": 1769851697611u64,
            "senderCorpId": "dingc53sim0000000000", "conversationType": "1",
            "senderId": "$:LWCP_v1:$sim00000000000000000000000000000000",
            "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=0123456789abcdef0123456789abcdef",
            "robotCode": "dingsim0000000000", "msgtype": "text",
            "text": {"content": format!("message {i}: {}", "x".repeat(420))},
            "senderPlatform": "Win", "openThreadId": "cidJ8k4sim0000000000000=",
        })
        .to_string();
        serde_json::json!({
            "specVersion": "1.0", "type": "CALLBACK",
            "headers": {"appId": "765ed67b-b170-4e12-ba38-6b59dc404ddb",
                "connectionId": "2f9c95bd-fe85-11f0-bee8-0eb3b764c0bb",
                "contentType": "application/json", "messageId": mid,
                "time": "1769851697756", "topic": "/v1.0/im/bot/messages/get"},
            "data": data,
        })
        .to_string()
    }
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let frames: Vec<String> = (0..n).map(frame).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path(), StoreOptions::default()).expect("spool");
    // A consumer group, so bodies are stored (without one, only receipts are: `--no-group`
    // measures that path).
    if !std::env::args().any(|a| a == "--no-group") {
        store.ensure_group("bench", StartAt::Newest).expect("group");
    }
    let mut path = Inline::new(store);
    let started = Instant::now();
    let mut acked = 0;
    for chunk in frames.chunks(BATCH) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        acked += path.run(&texts).expect("commit");
    }
    println!(
        "{n} messages in {:?} ({} bytes of ACKs)",
        started.elapsed(),
        acked
    );
}
