// A bot on the official Node SDK (npm dingtalk-stream 2.1.5) for tests/compat_sdk.rs: it
// records what it handles as `@@ {json}` lines on stdout. Its code is what an app writes; only
// the SDK's GATEWAY_URL constant is patched (tests/support/sdk-install node-app).
// Env: APP_ID, APP_SECRET.
import { DWClient, EventAck, TOPIC_ROBOT } from 'dingtalk-stream';

const out = (kind, fields) => console.log('@@ ' + JSON.stringify({ kind, ...fields }));

const client = new DWClient({ clientId: process.env.APP_ID, clientSecret: process.env.APP_SECRET });

client.registerCallbackListener(TOPIC_ROBOT, (res) => {
  const msg = JSON.parse(res.data);
  out('bot', { msgId: msg.msgId, text: msg.text.content });
  client.socketCallBackResponse(res.headers.messageId, { ok: true });
});

client.registerAllEventListener((msg) => {
  out('event', { eventId: msg.headers.eventId, eventType: msg.headers.eventType });
  return { status: EventAck.SUCCESS };
});

out('starting', {});
client.connect();
