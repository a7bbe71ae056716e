"""A bot on the official Python SDK (dingtalk-stream 0.24.3) for tests/compat_sdk.rs: it
records what it handles as `@@ {json}` lines on stdout. Its code is what an app writes; only
DINGTALK_OPENAPI_ENDPOINT (read by the SDK at import) points it at the local endpoint.

Env: APP_ID, APP_SECRET; BOT_TOKEN=1: print get_access_token() and exit.
"""
import json
import os
import sys
import time

import dingtalk_stream
from dingtalk_stream import AckMessage


def out(kind, **fields):
    print("@@ " + json.dumps({"kind": kind, "t": time.time(), **fields}), flush=True)


class Bot(dingtalk_stream.ChatbotHandler):
    async def process(self, callback):
        msg = dingtalk_stream.ChatbotMessage.from_dict(callback.data)
        out("bot", msgId=msg.message_id, text=msg.text.content)
        return AckMessage.STATUS_OK, "OK"


class Events(dingtalk_stream.EventHandler):
    async def process(self, event):
        out("event", eventId=event.headers.event_id, eventType=event.headers.event_type)
        return AckMessage.STATUS_OK, "OK"


class Card(dingtalk_stream.CallbackHandler):
    async def process(self, callback):
        card = dingtalk_stream.CardCallbackMessage.from_dict(callback.data)
        out("card", outTrackId=card.card_instance_id)
        return AckMessage.STATUS_OK, {"cardData": {"cardParamMap": {"clicked": "yes"}}}


def main():
    client = dingtalk_stream.DingTalkStreamClient(
        dingtalk_stream.Credential(os.environ["APP_ID"], os.environ["APP_SECRET"]))
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, Bot())
    client.register_all_event_handler(Events())
    client.register_callback_handler(dingtalk_stream.Card_Callback_Router_Topic, Card())
    if os.environ.get("BOT_TOKEN") == "1":
        out("token", token=client.get_access_token())
        sys.exit(0)
    out("starting", endpoint=client.OPEN_CONNECTION_API)
    client.start_forever()


if __name__ == "__main__":
    main()
