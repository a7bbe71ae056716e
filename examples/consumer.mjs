#!/usr/bin/env node
// A DingTalk bot behind dingtalk-streamd, in plain Node.js (no npm packages; Node 18+).
//
// It joins a consumer group on the daemon's Unix socket, answers every bot message through
// the message's own reply URL (its `sessionWebhook`), and acks each message once it is
// handled, so the daemon gives it again (to this member or another one) if the bot dies
// half-way.
//
//   node consumer.mjs [--socket PATH] [--group NAME]
//
//   --socket  the daemon's consumer socket (env DINGTALK_STREAMD_SOCKET,
//             default /run/dingtalk-streamd/stream.sock); the user needs the group
//             dingtalk-streamd-clients to connect
//   --group   the consumer group to join (env DINGTALK_STREAMD_GROUP, default bot)
//   Extra CAs for the reply URL (the bundled simulator's ca.pem): NODE_EXTRA_CA_CERTS=PEM.
//
// Replies are at least once: a message whose reply failed for a reason that may pass
// (network, HTTP 5xx) is not acked, so it comes again after the daemon's
// consumers.ack_wait. When the daemon stops, the socket closes and this program exits 1
// (under systemd, Restart= brings it back). A sessionWebhook URL is a bearer secret: it is
// never printed.

import http from "node:http";
import https from "node:https";
import net from "node:net";
import readline from "node:readline";
import { parseArgs } from "node:util";

const BOT_TOPIC = "/v1.0/im/bot/messages/get";
const REPLY_TIMEOUT_MS = 10_000;
const REMEMBERED = 1000; // msgIds already answered, so a redelivery is not answered twice

const log = (...parts) => console.error(...parts);

/** What the bot answers: here, an echo. Put the real work here. */
function replyText(data) {
  const text = (data.text?.content ?? "").trim();
  return text ? `got it: ${text}` : "got it";
}

/** POSTs JSON; resolves to [status, parsed body]. */
function postJson(url, value) {
  const body = Buffer.from(JSON.stringify(value));
  const client = new URL(url).protocol === "http:" ? http : https;
  return new Promise((resolve, reject) => {
    const req = client.request(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Content-Length": body.length },
      timeout: REPLY_TIMEOUT_MS,
    }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        try {
          resolve([res.statusCode, JSON.parse(Buffer.concat(chunks).toString() || "{}")]);
        } catch (e) {
          reject(new Error(`HTTP ${res.statusCode}: the answer is not JSON`));
        }
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", reject);
    req.end(body);
  });
}

/** POSTs a text message to a sessionWebhook. true: done (or never possible); false: try later. */
async function reply(url, content) {
  let status, answer;
  try {
    [status, answer] = await postJson(url, { msgtype: "text", text: { content } });
  } catch (e) {
    log(`reply failed: ${e.message}`);
    return false;
  }
  if (status >= 500) {
    log(`reply refused: HTTP ${status}`);
    return false;
  }
  if (status >= 400) {
    log(`reply refused: HTTP ${status}`);
    return true; // a 4xx will not get better
  }
  if ((answer.errcode ?? 0) !== 0) {
    // e.g. 300001: the session expired (DingTalk keeps it about 90 minutes).
    log(`reply refused: errcode ${answer.errcode}: ${answer.errmsg}`);
  }
  return true;
}

/** Handles one message; true when it may be acked. */
async function handle(msg, answered) {
  const data = msg.data;
  if (msg.topic !== BOT_TOPIC || typeof data !== "object" || data === null) {
    log(`#${msg.seq} ${msg.type} ${msg.topic}: nothing to answer`);
    return true;
  }
  const msgId = data.msgId ?? "";
  if (answered.has(msgId)) {
    log(`#${msg.seq} ${msgId}: answered already (redelivered)`);
    return true;
  }
  const url = data.sessionWebhook;
  const expires = data.sessionWebhookExpiredTime;
  if (!url || (typeof expires === "number" && expires < Date.now())) {
    log(`#${msg.seq} ${msgId}: no usable sessionWebhook; not answered`);
    return true;
  }
  if (!(await reply(url, replyText(data)))) return false;
  answered.add(msgId);
  if (answered.size > REMEMBERED) answered.delete(answered.values().next().value);
  log(`#${msg.seq} ${msgId}: answered ${data.senderNick ?? "?"}`);
  return true;
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      socket: {
        type: "string",
        default: process.env.DINGTALK_STREAMD_SOCKET ?? "/run/dingtalk-streamd/stream.sock",
      },
      group: { type: "string", default: process.env.DINGTALK_STREAMD_GROUP ?? "bot" },
    },
  });
  const sock = net.createConnection(args.socket);
  await new Promise((resolve, reject) => {
    sock.once("connect", resolve);
    sock.once("error", reject);
  }).catch((e) => {
    log(`cannot connect to ${args.socket}: ${e.message}`);
    process.exit(1);
  });
  sock.on("error", (e) => log(`socket: ${e.message}`));
  const send = (value) => sock.write(JSON.stringify(value) + "\n");
  // The hello must be the first line, within 200 ms of connecting.
  send({ hello: { group: args.group } });

  const answered = new Set();
  let joined = false;
  // One message at a time, in order: reply, then ack.
  for await (const line of readline.createInterface({ input: sock, crlfDelay: Infinity })) {
    const msg = JSON.parse(line);
    if (!joined) {
      if (!msg.welcome) {
        log(`not admitted to group ${args.group}: ${JSON.stringify(msg.error ?? msg)}`);
        process.exit(1);
      }
      joined = true;
      log(`joined group ${args.group} (protocol ${msg.welcome.protocol})`);
      continue;
    }
    if (msg.error) {
      log(`the daemon says: ${msg.error.code}: ${msg.error.message}`);
      continue;
    }
    if (await handle(msg, answered)) send({ ack: msg.seq });
  }
  log("the daemon closed the connection");
  process.exit(1);
}

main();
