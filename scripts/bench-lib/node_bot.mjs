// A no-op bot on the official Node SDK (npm dingtalk-stream@2.1.5) for scripts/bench.
//
// The SDK reads no env var: scripts/bench patches GATEWAY_URL in its dist/constants.{mjs,cjs}
// inside the throwaway npm folder. Trust for the simulator's CA: NODE_EXTRA_CA_CERTS (axios
// and ws both use Node's TLS store).
//
// Bot messages are CALLBACKs: the SDK does not ACK them by itself, the listener calls
// socketCallBackResponse. The all-events listener returns SUCCESS synchronously, which the SDK
// ACKs. Both only count.
//
// Env: BENCH_MARKS="200,20200": print "seen N T" (T = wall clock µs) when the N-th message is
// handled. BENCH_RECORD=FILE: also keep "T messageId" per message, written at the last mark.
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { DWClient, EventAck, TOPIC_ROBOT } from 'dingtalk-stream';

const marks = (process.env.BENCH_MARKS || '').split(',').filter(Boolean).map(Number).sort((a, b) => a - b);
const recordFile = process.env.BENCH_RECORD;
const records = recordFile ? [] : null;
let count = 0;
// Wall clock in µs with sub-millisecond resolution (Date.now() has only milliseconds).
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

function seen(messageId) {
  count++;
  if (records) records.push(`${nowUs()} ${messageId}\n`);
  while (marks.length && count >= marks[0]) {
    const mark = marks.shift();
    if (!marks.length && records) fs.writeFileSync(recordFile, records.join(''));
    process.stdout.write(`seen ${mark} ${nowUs()}\n`);
  }
}

const client = new DWClient({ clientId: 'sim-client', clientSecret: 'sim-secret', keepAlive: false, debug: false });
client.registerCallbackListener(TOPIC_ROBOT, (res) => {
  seen(res.headers.messageId);
  client.socketCallBackResponse(res.headers.messageId, 'OK');
});
client.registerAllEventListener((msg) => {
  seen(msg.headers.messageId);
  return { status: EventAck.SUCCESS };
});
client.connect();
