#!/usr/bin/env python3
"""Read what dingtalk-streamd hosts publish to NATS JetStream, with a durable pull consumer.

Every message published by any host lands once in the stream (JetStream drops a repeated
Nats-Msg-Id within the stream's duplicate_window); this worker takes each one, acks it after
handling it, and remembers its position on the server (the durable consumer), so a restart
goes on where it stopped. Needs nats-py (pip install nats-py).

    python3 examples/jetstream_consumer.py --url nats://127.0.0.1:4222 [--seconds 30]

Each message prints as: stream-seq  host#seq  subject  text. On exit it prints a summary:
messages taken, distinct Nats-Msg-Ids (equal unless something came twice, e.g. later than
the duplicate window), and per host the seqs seen.
"""

import argparse
import asyncio
import json
import signal
import sys

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def describe(body):
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("text"), dict):
        return f'{data.get("senderNick", "?")}: {data["text"].get("content", "")}'
    event_type = body.get("headers", {}).get("eventType")
    if event_type:
        return f"event {event_type}"
    return json.dumps(data)[:80]


async def wait_for_stream(js, stream, stop):
    while not stop.is_set():
        try:
            await js.stream_info(stream)
            return True
        except Exception:  # not created yet (the first daemon to connect creates it), or down
            await asyncio.sleep(0.5)
    return False


async def run(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.seconds:
        loop.call_later(args.seconds, stop.set)

    last_error = [None]

    async def on_error(e):
        text = f"{type(e).__name__}: {e}"
        if text != last_error[0]:  # once per kind while the server is away
            print(f"[consumer] NATS: {text}", flush=True)
        last_error[0] = text

    async def on_disconnected():
        print("[consumer] NATS disconnected; reconnecting", flush=True)

    async def on_reconnected():
        last_error[0] = None
        print("[consumer] NATS reconnected", flush=True)

    nc = await nats.connect(
        args.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    js = nc.jetstream()
    if not await wait_for_stream(js, args.stream, stop):
        await nc.close()
        return 0
    sub = await js.pull_subscribe(
        f"{args.subject_prefix}.>",
        durable=args.durable,
        stream=args.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
    )
    print(f"[consumer] reading stream {args.stream} as durable {args.durable!r}", flush=True)
    taken, keys, per_host = 0, set(), {}
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch=100, timeout=1)
        except nats.errors.TimeoutError:
            continue
        except Exception as e:  # the server is away: nats-py reconnects by itself
            print(f"[consumer] waiting for NATS: {type(e).__name__}", flush=True)
            await asyncio.sleep(1)
            continue
        for m in msgs:
            body = json.loads(m.data)
            host, seq = body.get("host", "?"), body.get("seq")
            key = (m.headers or {}).get("Nats-Msg-Id")
            taken += 1
            keys.add(key)
            per_host.setdefault(host, []).append(seq)
            if not args.quiet:
                print(
                    f"[consumer] #{m.metadata.sequence.stream} {host}#{seq} {m.subject} {describe(body)}",
                    flush=True,
                )
            await m.ack()
    await sub.unsubscribe()
    await nc.close()
    print(f"[consumer] taken {taken}, distinct Nats-Msg-Id {len(keys)}", flush=True)
    for host, seqs in sorted(per_host.items()):
        print(f"[consumer]   {host}: {len(seqs)} messages, seqs {min(seqs)}..{max(seqs)}", flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="nats://127.0.0.1:4222")
    p.add_argument("--stream", default="DINGTALK")
    p.add_argument("--subject-prefix", default="dingtalk")
    p.add_argument("--durable", default="worker")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    p.add_argument("--quiet", action="store_true", help="only the summary")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
