#!/usr/bin/env python3
"""A minimal DingTalk bot on the official Python SDK, unmodified: it answers every message
with "echo: <text>", sent to the sender through the robot OpenAPI (an access token from the
SDK, then POST /v1.0/robot/oToMessages/batchSend), and prints one line per message.

It is written exactly as for DingTalk. To run it behind dingtalk-streamd (compat: in the
daemon's config), only its endpoint changes:

    pip install dingtalk-stream==0.24.3 requests
    DINGTALK_OPENAPI_ENDPOINT=http://127.0.0.1:9470 \\
    APP_ID=local-app APP_SECRET="$(cat /etc/dingtalk-streamd/compat_secret)" \\
    python3 examples/sdk_bot.py

APP_ID and APP_SECRET are the local credentials (compat.client_id, compat.client_secret_file);
the daemon holds the real ones. CI runs this file against the simulator (tests/compat_sdk.rs).
"""
import json
import os

import requests

import dingtalk_stream
from dingtalk_stream import AckMessage

# The SDK reads the same variable at import: messages, tokens and API calls all go there.
OPENAPI = os.environ.get("DINGTALK_OPENAPI_ENDPOINT", "https://api.dingtalk.com")


class EchoBot(dingtalk_stream.ChatbotHandler):
    async def process(self, callback):
        msg = dingtalk_stream.ChatbotMessage.from_dict(callback.data)
        text = msg.text.content.strip() if msg.text else ""
        token = self.dingtalk_client.get_access_token()
        reply = requests.post(
            f"{OPENAPI}/v1.0/robot/oToMessages/batchSend",
            headers={"x-acs-dingtalk-access-token": token},
            json={
                "robotCode": msg.robot_code,
                "userIds": [msg.sender_staff_id],
                "msgKey": "sampleText",
                "msgParam": json.dumps({"content": f"echo: {text}"}),
            },
            timeout=10,
        )
        print(f"answered {msg.message_id}: HTTP {reply.status_code}", flush=True)
        return AckMessage.STATUS_OK, "OK"


def main():
    credential = dingtalk_stream.Credential(os.environ["APP_ID"], os.environ["APP_SECRET"])
    client = dingtalk_stream.DingTalkStreamClient(credential)
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, EchoBot())
    client.start_forever()


if __name__ == "__main__":
    main()
