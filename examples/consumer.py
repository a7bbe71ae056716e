#!/usr/bin/env python3
"""A DingTalk bot behind dingtalk-streamd, in plain Python (standard library only).

It joins a consumer group on the daemon's Unix socket, answers every bot message through
the message's own reply URL (its `sessionWebhook`), and acks each message once it is handled,
so the daemon gives it again (to this member or another one) if the bot dies half-way.

    python3 consumer.py [--socket PATH] [--group NAME] [--ca-file PEM]

--socket   the daemon's consumer socket (env DINGTALK_STREAMD_SOCKET,
           default /run/dingtalk-streamd/stream.sock); the user needs the group
           dingtalk-streamd-clients to connect
--group    the consumer group to join (env DINGTALK_STREAMD_GROUP, default bot)
--ca-file  a PEM file of CAs trusted, in addition to the system's, for the reply URL
           (env DINGTALK_CA_FILE; for the bundled simulator: its ca.pem)

Replies are at least once: a message whose reply failed for a reason that may pass (network,
HTTP 5xx) is not acked, so it comes again after the daemon's consumers.ack_wait. When the
daemon stops, the socket closes and this program exits 1 (under systemd, Restart= brings it
back). A sessionWebhook URL is a bearer secret: it is never printed.
"""

import argparse
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections import OrderedDict

BOT_TOPIC = "/v1.0/im/bot/messages/get"
REPLY_TIMEOUT = 10  # seconds per reply POST
REMEMBERED = 1000  # msgIds already answered, so a redelivery is not answered twice


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def reply_text(data):
    """What the bot answers: here, an echo. Put the real work here."""
    text = (data.get("text") or {}).get("content", "").strip()
    return f"got it: {text}" if text else "got it"


def reply(url, content, tls):
    """POSTs a text message to a sessionWebhook. True: done (or never possible); False: try
    again later."""
    body = json.dumps({"msgtype": "text", "text": {"content": content}}).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=REPLY_TIMEOUT, context=tls) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as e:
        log(f"reply refused: HTTP {e.code}")
        return e.code < 500  # 4xx will not get better; 5xx may
    except (OSError, ValueError) as e:
        log(f"reply failed: {e}")
        return False
    if answer.get("errcode", 0) != 0:
        # e.g. 300001: the session expired (DingTalk keeps it about 90 minutes).
        log(f"reply refused: errcode {answer.get('errcode')}: {answer.get('errmsg')}")
    return True


def handle(msg, tls, answered):
    """Handles one message; True when it may be acked."""
    data = msg.get("data")
    if msg.get("topic") != BOT_TOPIC or not isinstance(data, dict):
        log(f"#{msg['seq']} {msg.get('type')} {msg.get('topic')}: nothing to answer")
        return True
    msg_id = data.get("msgId", "")
    if msg_id in answered:
        log(f"#{msg['seq']} {msg_id}: answered already (redelivered)")
        return True
    url = data.get("sessionWebhook")
    expires = data.get("sessionWebhookExpiredTime")
    if not url or (isinstance(expires, (int, float)) and expires < time.time() * 1000):
        log(f"#{msg['seq']} {msg_id}: no usable sessionWebhook; not answered")
        return True
    if not reply(url, reply_text(data), tls):
        return False
    answered[msg_id] = True
    if len(answered) > REMEMBERED:
        answered.popitem(last=False)
    log(f"#{msg['seq']} {msg_id}: answered {data.get('senderNick', '?')}")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="the consumer socket (env DINGTALK_STREAMD_SOCKET)",
                    default=os.environ.get("DINGTALK_STREAMD_SOCKET",
                                           "/run/dingtalk-streamd/stream.sock"))
    ap.add_argument("--group", help="the consumer group (env DINGTALK_STREAMD_GROUP)",
                    default=os.environ.get("DINGTALK_STREAMD_GROUP", "bot"))
    ap.add_argument("--ca-file", help="extra CAs for the reply URL (env DINGTALK_CA_FILE)",
                    default=os.environ.get("DINGTALK_CA_FILE"))
    args = ap.parse_args()

    tls = ssl.create_default_context()
    if args.ca_file:
        tls.load_verify_locations(cafile=args.ca_file)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(args.socket)
    except OSError as e:
        log(f"cannot connect to {args.socket}: {e}")
        return 1
    lines, out = sock.makefile("rb"), sock.makefile("wb", buffering=0)
    # The hello must be the first line, within 200 ms of connecting.
    out.write(json.dumps({"hello": {"group": args.group}}).encode() + b"\n")
    welcome = json.loads(lines.readline() or b"{}")
    if "welcome" not in welcome:
        log(f"not admitted to group {args.group}: {welcome.get('error', welcome)}")
        return 1
    log(f"joined group {args.group} (protocol {welcome['welcome']['protocol']})")

    answered = OrderedDict()
    for line in lines:
        msg = json.loads(line)
        if "error" in msg:
            log(f"the daemon says: {msg['error']['code']}: {msg['error']['message']}")
            continue
        if handle(msg, tls, answered):
            out.write(json.dumps({"ack": msg["seq"]}).encode() + b"\n")
    log("the daemon closed the connection")
    return 1


if __name__ == "__main__":
    sys.exit(main())
