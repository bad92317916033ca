#!/usr/bin/env python3
"""A minimal voice bot for rst's `twilio` streams, written against Twilio's
Media Streams message reference: it prints each call's start, digits and stop,
and saves what the caller side says (µ-law, 8 kHz) to CALL_SID.ulaw.

    pip install websockets
    python3 examples/twilio_bot.py 8080 &
    udp_server --stream-url ws://127.0.0.1:8080/media --stream-format twilio
"""
import asyncio, base64, json, sys

import websockets


async def call(ws):
    audio, call_sid = bytearray(), None
    async for message in ws:
        event = json.loads(message)
        if event["event"] == "start":
            call_sid = event["start"]["callSid"]
            print("start", call_sid, json.dumps(event["start"]["customParameters"]), flush=True)
        elif event["event"] == "media" and event["media"]["track"] == "inbound":
            audio += base64.b64decode(event["media"]["payload"])
        elif event["event"] == "dtmf":
            print("dtmf", call_sid, event["dtmf"]["digit"], flush=True)
        elif event["event"] == "stop":
            with open(f"{call_sid}.ulaw", "wb") as out:
                out.write(audio)
            print("stop", call_sid, len(audio), flush=True)


async def main(port):
    async with websockets.serve(call, "127.0.0.1", port):
        print("listening", port, flush=True)
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
