#!/usr/bin/env python3
"""A no-op bot on the official Python SDK (PyPI dingtalk-stream==0.24.3) for scripts/bench.

The SDK reads DINGTALK_OPENAPI_ENDPOINT when it is imported (ticket URL = endpoint +
/v1.0/gateway/connections/open). Trust for the simulator's CA: REQUESTS_CA_BUNDLE (the ticket
request, `requests`) and SSL_CERT_FILE (the WebSocket, `websockets` via ssl's default context).

A ChatbotHandler (bot messages; the SDK ACKs {"response": "OK"} after process() returns) and
an EventHandler for all events (ACKed 200 OK). Both only count.

Env: BENCH_MARKS="200,20200": print "seen N T" (T = wall clock µs) when the N-th message is
handled. BENCH_RECORD=FILE: also keep "T messageId" per message, written at the last mark.
"""
import logging
import os
import time

import dingtalk_stream
from dingtalk_stream import AckMessage

MARKS = sorted(int(m) for m in os.environ.get("BENCH_MARKS", "").split(",") if m)
RECORD = os.environ.get("BENCH_RECORD")
records = [] if RECORD else None
count = 0


def seen(message_id):
    global count
    count += 1
    if records is not None:
        records.append((time.time_ns() // 1000, message_id))
    while MARKS and count >= MARKS[0]:
        mark = MARKS.pop(0)
        if not MARKS and records is not None:
            with open(RECORD, "w") as f:
                f.writelines(f"{t} {mid}\n" for t, mid in records)
        print(f"seen {mark} {time.time_ns() // 1000}", flush=True)


class Bot(dingtalk_stream.ChatbotHandler):
    async def process(self, callback):
        seen(callback.headers.message_id)
        return AckMessage.STATUS_OK, "OK"


class Events(dingtalk_stream.EventHandler):
    async def process(self, event):
        seen(event.headers.message_id)
        return AckMessage.STATUS_OK, "OK"


def main():
    logging.getLogger("dingtalk_stream").setLevel(logging.ERROR)
    client = dingtalk_stream.DingTalkStreamClient(
        dingtalk_stream.Credential("sim-client", "sim-secret"))
    client.logger.setLevel(logging.ERROR)
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, Bot())
    client.register_all_event_handler(Events())
    client.start_forever()


if __name__ == "__main__":
    main()
