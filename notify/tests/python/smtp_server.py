"""A real SMTP server (aiosmtpd) for jitgate-notify's tests, on loopback only.

Prints one JSON line {"ready": PORT} once listening, then one JSON line per message
received: envelope, whether the session was TLS, the authenticated login, the headers as
Python's email parser decodes them, and the text/plain and text/html parts. Exits when its
standard input closes (the test that started it ended).
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
import threading
from email import policy
from email.parser import BytesParser

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    def __init__(self, reply):
        self.reply = reply

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        parts = {}
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype in ("text/plain", "text/html") and ctype not in parts:
                # SMTP carries CRLF line ends; anything else left is what was sent.
                parts[ctype] = part.get_content().replace("\r\n", "\n")
        auth = session.auth_data if session.authenticated else None
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": tls,
            "login": auth.login.decode() if isinstance(auth, LoginPassword) else None,
            "headers": [[k, str(v)] for k, v in msg.items()],
            "raw_header_block": raw.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace"),
            "text": parts.get("text/plain"),
            "html": parts.get("text/html"),
        }
        print(json.dumps(record), flush=True)
        return self.reply


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["starttls", "implicit"], required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--reply", default="250 OK")
    args = ap.parse_args()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == args.user.encode()
            and auth_data.password == args.password.encode()
        )
        # handled=False: let aiosmtpd answer a failure itself (535).
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    handler = Recorder(args.reply)

    def factory():
        if args.mode == "starttls":
            return SMTP(
                handler,
                hostname="localhost",
                tls_context=ctx,
                require_starttls=True,
                authenticator=authenticator,
                auth_require_tls=True,
            )
        return SMTP(
            handler,
            hostname="localhost",
            authenticator=authenticator,
            auth_require_tls=False,
        )

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory,
            host="127.0.0.1",
            port=0,
            ssl=ctx if args.mode == "implicit" else None,
        )
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"ready": port}), flush=True)
        async with server:
            await server.serve_forever()

    def exit_when_stdin_closes():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
